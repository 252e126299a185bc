"""settings.AUDIT_COMMIT_OBSERVERS: callables that hear of each audit row after its commit,
at no query's cost to record()."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from audit.services import SystemActor, record
from tests.factories import make_project

pytestmark = pytest.mark.django_db

SEEN: list[tuple[str, int, bool]] = []
COLLECT = "tests.audit.test_observers.collect"
BROKEN = "tests.audit.test_observers.broken"


def collect(event: AuditEvent) -> None:
    SEEN.append((event.action, event.pk, connection.in_atomic_block))


def broken(event: AuditEvent) -> None:
    raise RuntimeError("observer bug")


@pytest.fixture(autouse=True)
def _fresh() -> None:
    SEEN.clear()


def _record(project: Any) -> tuple[AuditEvent, list[str]]:
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        event = record(actor=SystemActor("t"), action="flag.updated", target=project, project=project)
    return event, [q["sql"] for q in queries.captured_queries]


def test_record__observers_configured__no_extra_query(settings: Any) -> None:
    # Given a project (its own rows recorded first, so the chain has a head either way)
    project = make_project()
    # When one row is recorded without observers, and another with two
    settings.AUDIT_COMMIT_OBSERVERS = []
    _, without = _record(project)
    settings.AUDIT_COMMIT_OBSERVERS = [COLLECT, "flags.webhook_events.audit_event_committed"]
    _, with_observers = _record(project)
    # Then record() ran exactly the same statements
    assert len(with_observers) == len(without)
    assert [sql.split()[0] for sql in with_observers] == [sql.split()[0] for sql in without]


def test_record__committed__observer_called_after_commit_outside_the_transaction(
    settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.AUDIT_COMMIT_OBSERVERS = [COLLECT]
    project = make_project()
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            event = record(actor=SystemActor("t"), action="flag.updated", target=project, project=project)
        assert SEEN == []  # not yet: the test's own transaction stands in for the commit
    assert [(action, pk) for action, pk, _ in SEEN] == [("flag.updated", event.pk)]


def test_record__rolled_back__observer_never_called(settings: Any, django_capture_on_commit_callbacks: Any) -> None:
    settings.AUDIT_COMMIT_OBSERVERS = [COLLECT]
    project = make_project()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            record(actor=SystemActor("t"), action="flag.updated", target=project, project=project)
            raise RuntimeError("the change failed")
    assert SEEN == [] and callbacks == []


def test_record__no_observers__nothing_scheduled(settings: Any, django_capture_on_commit_callbacks: Any) -> None:
    settings.AUDIT_COMMIT_OBSERVERS = []
    project = make_project()
    with django_capture_on_commit_callbacks(execute=False) as callbacks, transaction.atomic():
        record(actor=SystemActor("t"), action="flag.updated", target=project, project=project)
    assert callbacks == []


def test_record__observer_raises__logged_and_the_next_observer_still_runs(
    settings: Any, django_capture_on_commit_callbacks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.AUDIT_COMMIT_OBSERVERS = [BROKEN, COLLECT]
    project = make_project()
    with caplog.at_level(logging.ERROR, logger="audit.services"), django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            event = record(actor=SystemActor("t"), action="flag.updated", target=project, project=project)
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    assert f"Audit observer {BROKEN} failed" in caplog.text
    assert [pk for _, pk, _ in SEEN] == [event.pk]


@pytest.mark.django_db(transaction=True)
def test_record__real_commit__observer_runs_outside_any_transaction(settings: Any) -> None:
    settings.AUDIT_COMMIT_OBSERVERS = [COLLECT]
    project = make_project()
    SEEN.clear()
    with transaction.atomic():
        event = record(actor=SystemActor("t"), action="flag.updated", target=project, project=project)
        assert SEEN == []
    assert SEEN == [("flag.updated", event.pk, False)]
