"""Operational rows of the site: what the Celery workers report about themselves.

These are not catalog changes and write no audit row: they describe machines, not release
decisions, and a heartbeat every 15 s per worker would drown the trail. Nothing in the
catalog reads them; /readyz, /metrics and the console's System status page do.
"""

from __future__ import annotations

from django.db import models


class WorkerHeartbeat(models.Model):
    """One Celery worker (by node name), upserted by the worker itself every
    WORKER_HEARTBEAT_SECONDS (featureops_site/worker_health.py)."""

    hostname = models.CharField(max_length=255, unique=True)  # the Celery node name, e.g. safety@host-1
    # The queues it consumes, unprefixed (featureops_site.queues names; CELERY_QUEUE_PREFIX removed).
    queues = models.JSONField(default=list)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()
    # Set at a warm shutdown, cleared by the next heartbeat: "stopped" reads differently from "silent".
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname


class TaskFailureCount(models.Model):
    """How many times a task has failed, on any worker: incremented by the task_failure signal,
    read by /metrics as a counter (failures are rare; the database makes them visible to the
    web process whatever host the worker runs on)."""

    task = models.CharField(max_length=255, unique=True)  # the registered task name
    failures = models.PositiveBigIntegerField(default=0)
    last_failed_at = models.DateTimeField()
    last_error = models.CharField(max_length=255, blank=True)  # the exception's class, never its message

    class Meta:
        ordering = ["task"]

    def __str__(self) -> str:
        return f"{self.task}: {self.failures}"
