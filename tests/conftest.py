"""Shared fixtures, and the rule for tests that need a real service or a browser: absent,
they are skipped with a reason; with REQUIRE_SERVICES=1 (as in CI) they fail instead."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection

from featureops_site.celery import app as celery_app

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def missing_service(reason: str) -> None:
    """Skip, or fail when the run promised its services (REQUIRE_SERVICES=1)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_sessionstart(session: pytest.Session) -> None:
    if REQUIRE_SERVICES and not os.environ.get("DATABASE_URL", "").startswith(("postgres", "postgresql")):
        raise pytest.UsageError("REQUIRE_SERVICES=1 needs DATABASE_URL pointing at PostgreSQL.")


@pytest.fixture(autouse=True)
def _service_markers(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("postgres") and connection.vendor != "postgresql":
        missing_service(f"this test needs PostgreSQL; the database is {connection.vendor}")
    if request.node.get_closest_marker("browser"):
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing_service("Playwright for Python is not installed")
        if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
            missing_service(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")


@pytest.fixture
def make_user(django_user_model: type) -> Callable[..., object]:
    counter = iter(range(1, 10_000))

    def make(username: str | None = None, **extra: object) -> object:
        name = username or f"user{next(counter)}"
        return django_user_model.objects.create_user(username=name, password="pw-for-tests-1", **extra)

    return make


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: object) -> None:
    # Demo users are created in many tests; the production hasher is slow by design.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # type: ignore[attr-defined]


def _uses_database(request: pytest.FixtureRequest) -> bool:
    return bool(request.node.get_closest_marker("django_db")) or bool(
        {"db", "transactional_db", "live_server", "django_db_setup"} & set(request.fixturenames))


def _is_transactional(request: pytest.FixtureRequest) -> bool:
    marker = request.node.get_closest_marker("django_db")
    by_marker = bool(marker and (marker.kwargs.get("transaction") or (marker.args and marker.args[0])))
    return by_marker or bool({"transactional_db", "live_server"} & set(request.fixturenames))


@pytest.fixture(autouse=True)
def _audit_trigger_active_but_flushable(request: pytest.FixtureRequest) -> Iterator[None]:
    """On PostgreSQL the audit table refuses UPDATE, DELETE and TRUNCATE. Every test runs with
    that trigger active; after a transactional test, the flush that empties the database
    (a TRUNCATE) runs with triggers switched off for this session only."""
    if not _uses_database(request):
        yield
        return
    request.getfixturevalue("_django_db_helper")  # set up first, so its flush runs after our teardown
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("RESET session_replication_role")
    yield
    if _is_transactional(request):  # only these end with a flush; the others roll back
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = replica")


@pytest.fixture
def eager_celery() -> Iterator[None]:
    """Tasks sent with .delay() run inline, errors raised; the previous configuration comes back after."""
    previous = celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    yield
    celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = previous


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    from flags.snapshot_store import reset_store
    from telemetry import ingest

    """Empty process caches (snapshots, metric ids) around a test that evaluates or ingests."""
    reset_store(None)
    ingest.metric_ids.clear()
    yield
    reset_store(None)
    ingest.metric_ids.clear()


@pytest.fixture
def demo(db: None) -> object:
    """The demo project, seeded: three flags, and one user per role (owner the editor, pm and
    lead approvers, operator, auditor, admin), all with the demo password. (Browser tests use
    their own `demo`, on a committed database a live server can read.)"""
    from flags.demo import seed_demo

    project, _ = seed_demo()
    return project


@pytest.fixture
def login(client: Any, demo: object, django_user_model: Any) -> Callable[[str], Any]:
    """Log the test client in as one of the demo users and return that user. (Browser tests use
    their own `login`, through the login form in Chromium.)"""

    def log_in(username: str) -> Any:
        user = django_user_model.objects.get(username=username)
        client.force_login(user)
        return user

    return log_in


@pytest.fixture
def viewer(demo: object) -> Any:
    """Someone holding the viewer role in the demo project, and no other."""
    from django.contrib.auth import get_user_model

    from flags.constants import Role
    from tests.factories import grant

    person = get_user_model().objects.create_user(username="visitor")
    grant(demo, person, Role.VIEWER)
    return person
