"""The webhook tasks: declared in the beat schedule, and a real worker delivering through the broker."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from django.db import transaction

from featureops_site.celery import app as celery_app
from tests.factories import TEST_ACTOR, make_project
from tests.webhooks.conftest import Receiver
from tests.workers import require_broker
from webhooks import tasks
from webhooks.models import WebhookDelivery
from webhooks.services import dispatch, webhook_create
from webhooks.signing import verify


def test_beat_schedule__retries_due_webhooks_every_30_seconds() -> None:
    entry = celery_app.conf.beat_schedule["retry-due-webhooks"]
    assert entry["task"] == tasks.retry_due_webhooks.name and entry["schedule"].total_seconds() == 30
    assert {tasks.retry_due_webhooks.name, tasks.deliver_webhook.name} <= set(celery_app.tasks)


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_deliver_task__real_worker_and_broker__receiver_gets_the_signed_event(
    receiver: Receiver, allow_loopback: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.contrib.testing.worker import start_worker

    require_broker()
    # Given a webhook pointing at a real receiver
    project = make_project()
    _, secret = webhook_create(project_id=project.pk, url=receiver.url, events=["flag."], actor=TEST_ACTOR)
    # (a queue of its own, so no other consumer of the broker can take the message)
    queue = f"test-webhooks-{uuid.uuid4().hex[:12]}"
    original_apply_async = tasks.deliver_webhook.apply_async

    def delay_on_own_queue(delivery_id: int) -> Any:
        return original_apply_async(args=[delivery_id], queue=queue)

    monkeypatch.setattr(tasks.deliver_webhook, "delay", delay_on_own_queue)
    # When an event is dispatched and committed, with a real worker consuming the broker
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10, queues=[queue]):
        with transaction.atomic():
            (delivery,) = dispatch(project_id=project.pk, event="flag.updated", payload={"flag": "tool_mode"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            delivery.refresh_from_db()
            if delivery.status != "pending":
                break
            time.sleep(0.2)
    # Then the worker delivered it, once, signed with the webhook's secret
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 1, 200)
    (request,) = receiver.received
    assert request.headers["x-featureops-event"] == "flag.updated"
    assert verify(secret, request.headers["x-featureops-timestamp"], request.body,
                  request.headers["x-featureops-signature"])
    assert WebhookDelivery.objects.count() == 1
