"""The console's System status page: each queue, what waits in it, the workers consuming it and
when each was last seen; task failures; telemetry aggregation lag. For site staff and project
admins (flags.permissions.VIEW_SYSTEM_STATUS). It refreshes itself every 10 s through htmx."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from featureops_site import selectors
from featureops_site.queues import QUEUES
from flags.permissions import VIEW_SYSTEM_STATUS
from flags.shortcuts import refused

REFRESH_SECONDS = 10


@login_required
@require_GET
@vary_on_headers("HX-Request")
def system_status(request: HttpRequest) -> HttpResponse:
    if refusal := refused(request, VIEW_SYSTEM_STATUS):
        return refusal
    now = timezone.now()
    workers = selectors.worker_statuses(now=now)
    queues = selectors.queue_statuses(workers, selectors.queue_depths())
    prefix = settings.CELERY_QUEUE_PREFIX
    without_worker = [queue.name for queue in queues if not queue.live_workers]
    context = {
        "now": now,
        "queues": queues,
        "workers": workers,
        "broker_up": any(queue.depth is not None for queue in queues),
        "queues_without_worker": without_worker,
        "failures": selectors.task_failure_counts(),
        "aggregation_lag": selectors.aggregation_lag_seconds(now=now),
        "stale_seconds": settings.WORKER_STALE_SECONDS,
        "heartbeat_seconds": settings.WORKER_HEARTBEAT_SECONDS,
        "refresh_seconds": REFRESH_SECONDS,
        # One worker per queue, as deployed (safety never shares a worker with notifications).
        "start_commands": [f"celery -A featureops_site worker --queues={prefix}{queue}"
                           for queue in (without_worker if workers else QUEUES)],
    }
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, "ops/_status_body.html", context)
    return render(request, "ops/system_status.html", context)
