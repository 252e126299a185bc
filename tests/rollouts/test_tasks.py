"""The scheduler's task, through the real broker to a real Celery worker: an approved request
scheduled for a moment applies once at that moment, even when the sweep runs twice."""

from __future__ import annotations

import datetime
import time
import uuid

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from featureops_site.celery import app as celery_app
from flags.demo import seed_demo
from rollouts.change_control import applying, approving
from rollouts.models import ChangeRequest
from rollouts.tasks import apply_scheduled_changes, expire_undecided_changes
from tests.rollouts.support import escalate, production, user
from tests.workers import require_broker


def test_beat__schedules_the_sweeps() -> None:
    names = {entry["task"] for entry in celery_app.conf.beat_schedule.values()}
    assert {apply_scheduled_changes.name, expire_undecided_changes.name} <= names
    assert {apply_scheduled_changes.name, expire_undecided_changes.name} <= set(celery_app.tasks)


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_scheduled_apply__real_worker_and_broker__applied_once_at_its_time() -> None:
    from celery.contrib.testing.worker import start_worker

    require_broker()
    # Given an approved escalation, scheduled two seconds ahead
    seed_demo()
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    when = timezone.now() + datetime.timedelta(seconds=2)
    applying.change_request_schedule(change_request=change_request, when=when, actor=user("owner"))
    queue = f"test-scheduler-{uuid.uuid4().hex[:12]}"
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10, queues=[queue]):
        # When the sweep runs before its time, nothing happens
        apply_scheduled_changes.apply_async(queue=queue)
        time.sleep(1)
        assert ChangeRequest.objects.get(pk=change_request.pk).status == "scheduled"
        # and when it runs twice after its time, through the broker
        while timezone.now() < when:
            time.sleep(0.1)
        apply_scheduled_changes.apply_async(queue=queue)
        apply_scheduled_changes.apply_async(queue=queue)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if ChangeRequest.objects.get(pk=change_request.pk).status == "applied":
                break
            time.sleep(0.2)
        time.sleep(1)  # let the second sweep finish too
    # Then it was applied exactly once, by the scheduler, with the same checks
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "applied"
    assert production().rules[-1]["serve"] == {"variation": "write"}
    applied = AuditEvent.objects.filter(action="change_request.applied", change_request_id=change_request.pk)
    assert applied.count() == 1 and applied.get().actor_kind == "system"
    assert AuditEvent.objects.filter(action="targeting.updated", change_request_id=change_request.pk).count() == 1
