"""A task the broker-fault tests can count without mocking anything, loaded only into the
workers those tests start (`celery worker -I tests.broker_probe_tasks`).

`record(token, seconds)` works for `seconds` (so that some tasks are running, unacknowledged,
when the broker goes away), then appends its token as one line to the file named by
BROKER_PROBE_LOG: one write with O_APPEND (a whole line, never interleaved with another
process's line) followed by fsync, so a line in the file means the task ran to its end.

`python -m tests.broker_probe_tasks QUEUE COUNT` publishes such tasks from a process of its own,
through the broker its environment's settings configure."""

from __future__ import annotations

import os
import sys
import time
import uuid

from celery import shared_task

RECORD_TASK = "tests.broker_probe_tasks.record"


@shared_task(name=RECORD_TASK, ignore_result=True)
def record(token: str, seconds: float = 0.0) -> None:
    if seconds:
        time.sleep(seconds)
    descriptor = os.open(os.environ["BROKER_PROBE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, f"{token}\n".encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def recorded(path: str | os.PathLike[str]) -> list[str]:
    """The tokens recorded so far, one per run (a token run twice appears twice)."""
    try:
        with open(path, encoding="utf-8") as lines:
            return [line.strip() for line in lines if line.strip()]
    except FileNotFoundError:
        return []


def main(argv: list[str]) -> None:
    """`python -m tests.broker_probe_tasks QUEUE COUNT`: publish COUNT record tasks to QUEUE
    through the broker the settings configure (from the environment, as a worker's would),
    printing the class of the transport that carries them, then each task's token."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "featureops_site.settings")
    django.setup()
    from featureops_site.celery import app

    queue, count = argv[0], int(argv[1])
    with app.connection_for_write() as connection:
        transport = type(connection.transport)
        print(f"{transport.__module__}:{transport.__qualname__}", flush=True)
        for _ in range(count):
            token = uuid.uuid4().hex
            app.send_task(RECORD_TASK, args=[token], queue=queue, connection=connection)
            print(token, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
