"""The change feed (flags/change_feed.py): a committed version bump reaches a listening snapshot
store at once (by notification, not by its safety poll); a rolled-back one reaches nobody."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from django.db import connection, transaction

from flags import change_feed
from flags.demo import seed_demo
from flags.models import Environment
from flags.snapshot_store import SnapshotStore, reset_store

# Long enough that a change served within a second can only have come by notification.
SAFETY_POLL_SECONDS = 30


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def listening_store(transactional_db: None) -> Iterator[SnapshotStore]:
    """A store whose poller LISTENs, with the safety poll pushed out of the test's reach."""
    store = reset_store(SnapshotStore(poll_seconds=0.2, safety_poll_seconds=SAFETY_POLL_SECONDS))
    assert store is not None
    yield store
    reset_store(None)
    # Wake the listener (an unparsable payload names no environment) so that its thread sees the
    # stop and closes its connections now, not after the 30 s wait.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, 'stop')", [change_feed.CHANNEL])
    for thread in threading.enumerate():
        if thread.name == "snapshot-poller":
            thread.join(timeout=5)


@pytest.mark.postgres
def test_committed_bump__listening_store__serves_it_within_a_second(listening_store: SnapshotStore) -> None:
    # Given a store that has loaded the environment and is listening
    seed_demo()
    environment = Environment.objects.get(project__key="support-assistant", key="development")
    assert listening_store.snapshot(environment.pk) is not None  # starts the poller
    # (its first wake-up is the LISTEN connection being made; from then on it hears commits)
    assert _wait_for(lambda: listening_store.notifications >= 1, timeout=5)
    before = listening_store.snapshot(environment.pk).version  # type: ignore[union-attr]
    woken = listening_store.notifications
    # When a version bump commits
    with transaction.atomic():
        change_feed.bump_environments(ids=[environment.pk])
    committed = time.monotonic()
    # Then the store serves the new version within a second, woken by the notification
    served = _wait_for(lambda: listening_store.snapshot(environment.pk).version == before + 1,  # type: ignore[union-attr]
                       timeout=1.0)
    assert served, f"still version {listening_store.snapshot(environment.pk).version} after 1 s"  # type: ignore[union-attr]
    assert time.monotonic() - committed < 1.0
    assert listening_store.notifications == woken + 1


@pytest.mark.postgres
def test_rolled_back_bump__listening_store__hears_nothing(listening_store: SnapshotStore) -> None:
    # Given a listening store
    seed_demo()
    environment = Environment.objects.get(project__key="support-assistant", key="development")
    assert listening_store.snapshot(environment.pk) is not None
    assert _wait_for(lambda: listening_store.notifications >= 1, timeout=5)
    before = listening_store.snapshot(environment.pk).version  # type: ignore[union-attr]
    woken = listening_store.notifications

    # When a bump is rolled back
    class Abandoned(Exception):
        pass

    with pytest.raises(Abandoned), transaction.atomic():
        change_feed.bump_environments(ids=[environment.pk])
        raise Abandoned
    time.sleep(0.5)
    # Then nothing was notified and the version served stays
    assert listening_store.notifications == woken
    assert listening_store.snapshot(environment.pk).version == before  # type: ignore[union-attr]
    assert Environment.objects.get(pk=environment.pk).version == before
    # and a bump committed afterwards still arrives (the listener is alive, not merely deaf)
    with transaction.atomic():
        change_feed.bump_environments(ids=[environment.pk])
    assert _wait_for(lambda: listening_store.snapshot(environment.pk).version == before + 1,  # type: ignore[union-attr]
                     timeout=1.0)


@pytest.mark.postgres
def test_project_bump__every_environment_of_it__named_in_one_notification(transactional_db: None) -> None:
    # Given a listener connection of our own
    import psycopg

    project, _ = seed_demo()
    versions = dict(Environment.objects.filter(project=project).values_list("id", "version"))
    params = change_feed.listener_params()
    assert params is not None
    with psycopg.connect(**params, autocommit=True) as listener:
        listener.execute(f"LISTEN {change_feed.CHANNEL}")
        # When a project's environments are bumped
        with transaction.atomic():
            change_feed.bump_environments(project_id=project.pk)
        payloads = [notification.payload for notification in listener.notifies(timeout=2, stop_after=1)]
    # Then one notification names each environment at its new version
    assert len(payloads) == 1
    named = {env_id: version for env_id, version, _changed_at in change_feed.parse(payloads[0])}
    assert named == {env_id: version + 1 for env_id, version in versions.items()}
    changed_at = {env_id: int(moment.timestamp()) for env_id, moment in
                  Environment.objects.filter(project=project).values_list("id", "changed_at")}
    assert {env_id: stamp for env_id, _, stamp in change_feed.parse(payloads[0])} == changed_at


def test_parse__malformed_parts__are_skipped() -> None:
    assert change_feed.parse("3:7:1700000000") == [(3, 7, 1700000000)]
    assert change_feed.parse("3:7:1700000000,garbage,4:x:1,5:6,,6:1:2:3,8:9:10") == [
        (3, 7, 1700000000), (8, 9, 10)]
    assert change_feed.parse("") == []
    assert change_feed.parse("stop") == []
