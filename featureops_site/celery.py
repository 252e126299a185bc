"""The Celery app. Tasks are autodiscovered from each app's tasks.py; the beat schedule is
declared once, in settings.CELERY_BEAT_SCHEDULE."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "featureops_site.settings")

app = Celery("featureops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
