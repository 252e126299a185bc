"""Webhooks fired by what the audit trail records (flags.webhook_events through the audit
observer hook): after commit only, named after the audit action, with the flag by key."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.db import transaction

from flags import services as flag_services
from flags import webhook_events
from flags.models import Targeting
from rollouts.change_control import approving
from tests.factories import TEST_ACTOR, make_project, make_string_flag
from tests.rollouts.support import escalate, user
from webhooks.models import WebhookDelivery
from webhooks.services import webhook_create

pytestmark = pytest.mark.django_db


def _development(flag: Any) -> Targeting:
    return Targeting.objects.get(flag=flag, environment__key="development")


def test_targeting_update__committed__targeting_updated_delivery_with_flag_and_change(
    enqueued: list[int], django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    # Given a flag and a webhook subscribed to targeting changes
    settings.CONSOLE_BASE_URL = "https://console.example.com"
    project = make_project()
    flag = make_string_flag(project)
    webhook, _ = webhook_create(project_id=project.pk, url="https://hooks.example.com/x", events=["targeting."],
                                actor=TEST_ACTOR)
    # When the flag is turned on in development and the change commits
    with django_capture_on_commit_callbacks(execute=True):
        flag_services.targeting_update(targeting=_development(flag), enabled=True, reason="launch", actor=TEST_ACTOR)
    # Then one targeting.updated delivery is queued and handed to Celery
    (delivery,) = WebhookDelivery.objects.all()
    assert (delivery.webhook_id, delivery.event) == (webhook.pk, "targeting.updated")
    assert enqueued == [delivery.pk]
    data = delivery.payload["data"]
    assert data["action"] == "targeting.updated" and data["reason"] == "launch"
    assert data["flag"] == {"id": flag.pk, "key": "tool_mode", "name": "tool mode",
                            "url": "https://console.example.com/p/proj/flags/tool_mode/"}
    assert data["project"] == {"id": project.pk, "key": "proj", "name": "Proj"}
    assert data["environment"]["name"] == "Development"
    assert data["before"]["enabled"] is False and data["after"]["enabled"] is True
    assert data["actor"] == {"label": "system:tests", "kind": "system"} and data["audit_event_id"]


def test_targeting_update__rolled_back__no_delivery(
    enqueued: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    # Given a webhook for every event
    project = make_project()
    flag = make_string_flag(project)
    webhook_create(project_id=project.pk, url="https://hooks.example.com/x", events=[], actor=TEST_ACTOR)
    # When a targeting change is made inside a transaction that fails afterwards
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            flag_services.targeting_update(targeting=_development(flag), enabled=True, actor=TEST_ACTOR)
            raise RuntimeError("the caller failed after the change")
    # Then no webhook hears of it
    assert not WebhookDelivery.objects.exists() and enqueued == []


def test_events__unsubscribed_or_unmapped__nothing_queued(
    enqueued: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    # Given a webhook for segments only
    project = make_project()
    flag = make_string_flag(project)
    webhook_create(project_id=project.pk, url="https://hooks.example.com/x", events=["segment."], actor=TEST_ACTOR)
    # When targeting changes, and another webhook is created (webhook.* is not forwarded at all)
    with django_capture_on_commit_callbacks(execute=True):
        flag_services.targeting_update(targeting=_development(flag), enabled=True, actor=TEST_ACTOR)
    with django_capture_on_commit_callbacks(execute=True):
        webhook_create(project_id=project.pk, url="https://hooks.example.com/y", events=[], actor=TEST_ACTOR)
    # Then nothing is queued
    assert not WebhookDelivery.objects.exists()


def test_change_request_decisions__created_and_approved__one_delivery_each(
    demo: Any, enqueued: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    # Given the demo project with a webhook for change requests
    webhook_create(project_id=demo.pk, url="https://hooks.example.com/x", events=["change_request."],
                   actor=TEST_ACTOR)
    # When an escalation is requested, then approved by an approver
    with django_capture_on_commit_callbacks(execute=True):
        change_request = escalate()
    with django_capture_on_commit_callbacks(execute=True):
        approving.change_request_approve(change_request=change_request, actor=user("pm"), comment="ok")
    # Then each decision reached the webhook, linked to the request and naming the flag
    deliveries = list(WebhookDelivery.objects.order_by("id"))
    assert [d.event for d in deliveries] == ["change_request.created", "change_request.approved"]
    approved = deliveries[1].payload["data"]
    assert approved["change_request_id"] == change_request.pk and approved["reason"] == "ok"
    assert approved["flag"]["key"] == change_request.flag.key
    assert approved["actor"]["label"].endswith("(pm)")


def test_observer__fails__logged_and_the_change_stands(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a webhook, and a dispatch that blows up
    project = make_project()
    flag = make_string_flag(project)
    webhook_create(project_id=project.pk, url="https://hooks.example.com/x", events=[], actor=TEST_ACTOR)

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("webhooks are broken")

    monkeypatch.setattr(webhook_events, "dispatch", broken)
    # When a targeting change commits
    with caplog.at_level(logging.ERROR, logger="flags.webhook_events"), django_capture_on_commit_callbacks(execute=True):
        flag_services.targeting_update(targeting=_development(flag), enabled=True, actor=TEST_ACTOR)
    # Then the change is kept and the failure is logged
    assert _development(flag).enabled is True
    assert "Could not dispatch webhooks" in caplog.text


