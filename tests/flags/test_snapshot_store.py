"""The OFREP snapshot store (flags/snapshot_store.py): requests that arrive while it loads its
first snapshot wait for it, instead of refusing valid SDK keys."""

from __future__ import annotations

import threading
import time

import pytest

from flags import services
from flags.demo import seed_demo
from flags.models import Environment
from flags.snapshot_builder import build_environment_snapshot
from flags.snapshot_store import SnapshotStore, reset_store
from tests.factories import TEST_ACTOR

pytestmark = pytest.mark.django_db


@pytest.mark.django_db(transaction=True)
def test_store__requests_during_first_load__wait_instead_of_refusing_valid_keys() -> None:
    seed_demo()
    environment = Environment.objects.get(project__key="support-assistant", key="production")
    _, raw_key = services.sdk_key_create(environment=environment, name="race", actor=TEST_ACTOR)

    def slow_build(environment_id: int) -> dict:
        time.sleep(0.3)
        return build_environment_snapshot(environment_id)

    store = reset_store(SnapshotStore(poll_seconds=0, build=slow_build))
    from flags.services.sdk_keys import hash_sdk_key

    results: list[str] = []

    def lookup() -> None:
        try:
            results.append(store.lookup(hash_sdk_key(raw_key)).status)
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=lookup) for _ in range(4)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join(timeout=30)
    reset_store(None)
    assert results == ["ok"] * 4

