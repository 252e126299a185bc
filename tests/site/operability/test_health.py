"""The probes (issue 15, item 6): /healthz answers while the process is up, without the
database; /readyz checks the database, the snapshots and a live worker per queue, called
through the project's real WSGI application (the one gunicorn serves)."""

from __future__ import annotations

from typing import Any

import pytest

from featureops_site.queues import QUEUES
from flags.models import Environment
from tests.ops_client import wsgi
from tests.site.operability.support import every_queue_live, heartbeat

# --- /healthz ----------------------------------------------------------------------------------


def test_healthz__process_up__200_without_touching_the_database() -> None:
    # Given a test without database access (any query would raise)
    # When a probe asks, addressing the pod by its IP (no ALLOWED_HOSTS entry)
    answer = wsgi("GET", "/healthz")
    # Then it answers 200 "ok" JSON, uncached
    assert answer.status == 200 and answer.json() == {"status": "ok"}
    assert answer.headers["Content-Type"] == "application/json" and answer.headers["Cache-Control"] == "no-store"
    assert wsgi("POST", "/healthz").status == 405


# --- /readyz -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_readyz__database_snapshots_and_a_live_worker_per_queue__200(sdk_key: str) -> None:
    # Given a worker seen 5 s ago on every queue
    heartbeat("all@host-a", list(QUEUES), seconds_ago=5)
    # When the probe asks
    answer = wsgi("GET", "/readyz")
    # Then every check passes and is named
    assert answer.status == 200, answer.text
    body = answer.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "snapshots", "workers"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["snapshots"]["environments"] == Environment.objects.count()
    assert body["checks"]["workers"]["queues"]["safety"] == {"ok": True, "live_workers": 1, "last_seen_seconds_ago": 5}


@pytest.mark.django_db
def test_readyz__a_queue_whose_worker_went_silent__503_naming_the_queue_not_the_host(settings: Any) -> None:
    # Given workers on every queue but safety, whose only worker was last seen 2 minutes ago,
    # and a stopped worker that consumed safety too
    settings.WORKER_STALE_SECONDS = 45
    heartbeat("main@host-a.internal", ["telemetry", "notifications", "reminders"])
    heartbeat("safety@host-b.internal", ["safety"], seconds_ago=120)
    heartbeat("spare@host-c.internal", ["safety"], stopped=True)
    # When the probe asks
    answer = wsgi("GET", "/readyz")
    # Then it is not ready, because of the workers alone, and says which queue
    assert answer.status == 503
    checks = answer.json()["checks"]
    assert checks["database"]["ok"] and checks["snapshots"]["ok"]
    assert checks["workers"]["ok"] is False
    assert checks["workers"]["queues"]["safety"] == {"ok": False, "live_workers": 0, "last_seen_seconds_ago": 0}
    assert "safety" in checks["workers"]["detail"] and "telemetry" not in checks["workers"]["detail"]
    # and no host name leaks to an unauthenticated caller
    assert "host-" not in answer.text and "internal" not in answer.text


@pytest.mark.django_db
def test_readyz__stale_window_from_settings__a_heartbeat_just_inside_passes(settings: Any) -> None:
    settings.WORKER_STALE_SECONDS = 30
    heartbeat("all@host-a", list(QUEUES), seconds_ago=25)
    assert wsgi("GET", "/readyz").status == 200
    settings.WORKER_STALE_SECONDS = 20
    assert wsgi("GET", "/readyz").status == 503


@pytest.mark.django_db
def test_readyz__exclude_workers__ready_without_any_worker_and_says_so() -> None:
    # Given no worker at all
    # When the evaluation pool's probe excludes the workers check
    answer = wsgi("GET", "/readyz", query="exclude=workers")
    # Then the process is ready to serve, and the body says what was skipped
    assert answer.status == 200, answer.text
    assert set(answer.json()["checks"]) == {"database", "snapshots"} and answer.json()["excluded"] == ["workers"]
    # and without the exclusion it is not
    assert wsgi("GET", "/readyz").status == 503
    assert wsgi("GET", "/readyz", query="exclude=workers,snapshots&exclude=database").json()["checks"] == {}


def test_readyz__unknown_check_excluded__400_listing_the_checks() -> None:
    answer = wsgi("GET", "/readyz", query="exclude=worker")
    assert answer.status == 400
    assert "worker" in answer.json()["errorDetails"] and "database, snapshots, workers" in answer.json()["errorDetails"]


def test_readyz__no_project_yet__snapshots_ready_with_zero_environments(db: None) -> None:
    every_queue_live()
    answer = wsgi("GET", "/readyz")
    assert answer.status == 200 and answer.json()["checks"]["snapshots"]["detail"] == "0 environments loaded"
