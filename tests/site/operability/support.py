"""Helpers of the operability tests: a /metrics scrape through the WSGI application, and worker
heartbeats as workers record them."""

from __future__ import annotations

import datetime
from typing import Any

from django.utils import timezone

from featureops_site.models import WorkerHeartbeat
from featureops_site.queues import QUEUES
from featureops_site.services import worker_heartbeat_record
from tests.ops_client import wsgi


def scrape(**kwargs: Any) -> str:
    answer = wsgi("GET", "/metrics", **kwargs)
    assert answer.status == 200, answer.text
    return answer.text


def heartbeat(hostname: str, queues: list[str], *, seconds_ago: float = 0, stopped: bool = False) -> None:
    now = timezone.now()
    worker_heartbeat_record(hostname=hostname, queues=queues, pid=4242, started_at=now - datetime.timedelta(hours=1),
                            now=now - datetime.timedelta(seconds=seconds_ago))
    if stopped:
        WorkerHeartbeat.objects.filter(hostname=hostname).update(stopped_at=now)


def every_queue_live() -> None:
    heartbeat("all@host-a", list(QUEUES))
