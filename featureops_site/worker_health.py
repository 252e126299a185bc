"""What each Celery worker reports about itself, so that a dead worker never goes unnoticed.

- `WorkerHeartbeatStep`, a consumer bootstep (registered in featureops_site/celery.py): every
  WORKER_HEARTBEAT_SECONDS the consumer's timer (the loop that takes tasks off the broker, as
  Celery's own event heartbeat does) asks a writer thread to upsert the worker's
  `WorkerHeartbeat` row. The tick proves the consumer loop is alive; the write happens off that
  loop, so a slow or unreachable database never stalls task consumption, and a failed write is
  logged and retried at the next tick, never raised. A warm shutdown marks the row stopped;
  a killed worker simply goes silent, and turns stale after WORKER_STALE_SECONDS.
- `count_task_failure`, a `task_failure` receiver: one increment of the task's
  `TaskFailureCount` row, from whichever worker ran it, for /metrics.

Models are imported inside functions: this module is imported with the Celery app, before
Django's apps are ready.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import bootsteps
from celery.signals import task_failure
from django.db import close_old_connections, connection

logger = logging.getLogger(__name__)


def unprefixed(queue: str, prefix: str) -> str:
    """A queue's name without the deployment's CELERY_QUEUE_PREFIX (the featureops_site.queues name)."""
    return queue[len(prefix):] if prefix and queue.startswith(prefix) else queue


def _close_connection_quietly() -> None:
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail too; the next use reconnects
        logger.debug("closing the database connection failed", exc_info=True)


class _HeartbeatWriter(threading.Thread):
    """Writes the worker's heartbeat each time `beat()` is called, on its own database connection."""

    def __init__(self, *, hostname: str, pid: int, prefix: str) -> None:
        super().__init__(name="featureops-heartbeat", daemon=True)
        from django.utils import timezone

        self.hostname, self.pid, self.prefix = hostname, pid, prefix
        self.started_at = timezone.now()
        self._due = threading.Event()
        self._stopping = threading.Event()
        self._queues: tuple[str, ...] = ()
        self._forgotten_old_rows = False

    def beat(self, queues: tuple[str, ...]) -> None:
        self._queues = queues
        self._due.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._due.set()
        self.join(timeout)

    def run(self) -> None:
        try:
            while True:
                self._due.wait()
                if self._stopping.is_set():
                    return
                self._due.clear()
                self._write()
        finally:
            _close_connection_quietly()

    def _write(self) -> None:
        from featureops_site.services import worker_heartbeat_record, worker_heartbeats_forget

        try:
            close_old_connections()  # as Django does around a request: drop a broken or expired connection
            worker_heartbeat_record(hostname=self.hostname, pid=self.pid, started_at=self.started_at,
                                    queues=[unprefixed(queue, self.prefix) for queue in self._queues])
            if not self._forgotten_old_rows:
                worker_heartbeats_forget()
                self._forgotten_old_rows = True
        except Exception as exc:  # noqa: BLE001 - never take the worker down; the next tick retries
            logger.warning("worker heartbeat not recorded, retrying at the next tick: %s: %s",
                           type(exc).__name__, exc)
            _close_connection_quietly()
        else:
            try:
                close_old_connections()
            except Exception:  # noqa: BLE001 - same as above
                _close_connection_quietly()


class WorkerHeartbeatStep(bootsteps.StartStopStep):
    """Consumer bootstep: the worker's heartbeat row (see the module docstring).

    Started with the consumer, after its task consumer exists (so the queues are known); stopped
    when the consumer restarts after losing the broker (a worker that cannot consume is not
    alive as far as its queues are concerned) and at shutdown, which also marks the row stopped.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._writer: _HeartbeatWriter | None = None
        self._timer_entry: Any = None

    def start(self, c: Any) -> None:
        from django.conf import settings

        self._writer = _HeartbeatWriter(hostname=c.hostname, pid=os.getpid(), prefix=settings.CELERY_QUEUE_PREFIX)
        self._writer.start()
        self._tick(c)  # at once: the worker is listed as soon as it consumes
        self._timer_entry = c.timer.call_repeatedly(settings.WORKER_HEARTBEAT_SECONDS, self._tick, (c,))

    def _tick(self, c: Any) -> None:
        writer = self._writer
        if writer is None:
            return
        try:
            queues = tuple(queue.name for queue in (c.task_consumer.queues if c.task_consumer else ()))
        except Exception:  # noqa: BLE001 - the consumer is being torn down; skip this tick
            return
        writer.beat(queues)

    def stop(self, c: Any) -> None:
        if self._timer_entry is not None:
            try:
                c.timer.cancel(self._timer_entry)
            except Exception:  # noqa: BLE001 - the timer may already be stopped at shutdown
                logger.debug("cancelling the heartbeat timer failed", exc_info=True)
            self._timer_entry = None
        if self._writer is not None:
            self._writer.stop()

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        writer, self._writer = self._writer, None
        if writer is None:
            return
        from featureops_site.services import worker_stopped_record

        try:
            worker_stopped_record(hostname=writer.hostname, pid=writer.pid)
        except Exception as exc:  # noqa: BLE001 - a worker stopping while the database is away just goes silent
            logger.warning("could not mark the worker stopped: %s: %s", type(exc).__name__, exc)
        finally:
            _close_connection_quietly()


@task_failure.connect
def count_task_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    """One more failure of this task, for /metrics (`featureops_task_failures_total`)."""
    from featureops_site.services import task_failure_record

    task_name = getattr(sender, "name", None) or str(sender)
    error = type(exception).__name__ if exception is not None else ""
    eager = bool(getattr(getattr(sender, "request", None), "is_eager", False))
    try:
        if not eager:  # an eager task runs in its caller's transaction: its connection is not ours to close
            close_old_connections()
        task_failure_record(task_name=task_name, error=error)
    except Exception as exc:  # noqa: BLE001 - counting must never turn one failure into two
        logger.warning("task failure of %s not counted: %s: %s", task_name, type(exc).__name__, exc)
