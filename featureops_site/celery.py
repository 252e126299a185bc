"""The Celery app. Tasks are autodiscovered from each app's tasks.py; the beat schedule is
declared once, in settings.CELERY_BEAT_SCHEDULE.

Every worker also reports itself: a heartbeat row per worker and a failure count per task
(featureops_site/worker_health.py), read by /readyz, /metrics and the System status page. Its
log lines follow settings.LOG_FORMAT (JSON in production), like the web processes'.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from featureops_site.worker_health import WorkerHeartbeatStep, count_task_failure

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "featureops_site.settings")

app = Celery("featureops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.steps["consumer"].add(WorkerHeartbeatStep)

__all__ = ["app", "count_task_failure"]  # the task_failure receiver is connected by importing it


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format_as_configured(logger: Any, **_: Any) -> None:
    """Celery installs its own handlers (on the root logger and the task logger); with JSON
    logs, they format like every other process's (settings.LOGGING)."""
    from django.conf import settings

    from featureops_site.log_format import json_formatter

    if settings.LOG_FORMAT != "json":
        return
    for handler in logger.handlers:
        handler.setFormatter(json_formatter())
