"""Races for the tests that need two things to happen at the same moment on a real database
(PostgreSQL, `django_db(transaction=True)`): each runs on a thread of its own with its own
database connection, closed when it is done."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection, connections, transaction


def run_together(*callables: Callable[[], Any], timeout: float = 30) -> tuple[list[Any], list[BaseException]]:
    """Start each callable on its own thread, all released at once by a barrier; wait up to
    `timeout` seconds for each. Returns what the callables returned and what they raised, each in
    the order they finished; a thread still running after its wait is left out of both."""
    barrier = threading.Barrier(len(callables))
    results: list[Any] = []
    errors: list[BaseException] = []

    def run(callable_: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=10)
            results.append(callable_())
        except BaseException as exc:  # noqa: BLE001 - handed to the test, which asserts on it
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(callable_,)) for callable_ in callables]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return results, errors


@contextmanager
def transaction_held_open(work: Callable[[], Any], timeout: float = 20) -> Iterator[None]:
    """Run `work` in a transaction on another thread and keep that transaction open (its locks
    held, its rows not yet committed) while the block runs; then let it commit and wait for it."""
    done, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                work()
                done.set()
                release.wait(timeout=timeout)
        finally:
            connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert done.wait(timeout=10)
    try:
        yield
    finally:
        release.set()
        thread.join(timeout=timeout)
