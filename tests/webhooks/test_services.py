"""Webhook configuration (audited), dispatch after commit, and delivery to a real HTTP receiver:
signature, retries with backoff, timeouts, and one send per attempt under concurrency."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from audit.models import AuditEvent
from tests.concurrency import run_together
from tests.factories import TEST_ACTOR, make_project
from tests.servers import free_port
from tests.webhooks.conftest import Receiver
from webhooks import services, tasks
from webhooks.models import Webhook, WebhookDelivery
from webhooks.signing import canonical_body, verify

pytestmark = pytest.mark.django_db


def _webhook(project: Any, url: str = "https://hooks.example.com/T000/B000/token", events: list[str] | None = None,
             **extra: Any) -> Webhook:
    webhook, _ = services.webhook_create(project_id=project.pk, project_label=project.name, url=url,
                                         events=events or [], actor=TEST_ACTOR, **extra)
    return webhook


def _dispatch(project: Any, event: str = "flag.updated", **payload: Any) -> list[WebhookDelivery]:
    with transaction.atomic():
        return services.dispatch(project_id=project.pk, event=event, payload=payload or {"flag": "tool_mode"})


def _make_due(delivery: WebhookDelivery) -> None:
    """Time travel: the backoff has passed."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() - datetime.timedelta(seconds=1))


# --- configuration -------------------------------------------------------------------------


def test_webhook_create__valid__secret_returned_once_and_audited_without_the_url_token(make_user: Any) -> None:
    # Given a project and its admin
    project = make_project()
    admin = make_user("admin")
    # When a webhook is created
    webhook, secret = services.webhook_create(project_id=project.pk, project_label=project.name,
                                              url="https://hooks.example.com/T000/B000/xoxb-token",
                                              events=["flag.", "targeting."], description="CI", actor=admin)
    # Then the secret is long and random, kept for signing, and the audit row names the project
    assert len(secret) >= 40 and webhook.secret == secret and webhook.created_by == admin
    event = AuditEvent.objects.get(action="webhook.created")
    assert (event.project_id, event.project_label, event.target_type) == (project.pk, project.name, "webhooks.webhook")
    assert event.after["url"] == "https://hooks.example.com/…" and event.after["events"] == ["flag.", "targeting."]
    # And neither the URL's token nor the secret reached the audit trail
    assert "xoxb-token" not in json.dumps(event.after) and secret not in json.dumps(event.after)
    # And a second webhook gets another secret
    assert services.webhook_create(project_id=project.pk, url="https://b.example.com/", events=[],
                                   actor=admin)[1] != secret


@pytest.mark.parametrize("url", ["ftp://files.example.com/x", "javascript:alert(1)", "not a url", "",
                                 "file:///etc/passwd"])
def test_webhook_create__not_http_or_https__refused_on_url(url: str) -> None:
    # Given a project
    project = make_project()
    # When a webhook is created with something that is not an http(s) address
    with pytest.raises(ValidationError) as raised:
        services.webhook_create(project_id=project.pk, url=url, events=[], actor=TEST_ACTOR)
    # Then the error names the URL field and nothing is written
    assert "url" in raised.value.error_dict
    assert not Webhook.objects.exists() and not AuditEvent.objects.filter(action="webhook.created").exists()


def test_webhook_create__unknown_event_family__refused() -> None:
    project = make_project()
    with pytest.raises(ValidationError) as raised:
        services.webhook_create(project_id=project.pk, url="https://a.example.com/", events=["flags."], actor=TEST_ACTOR)
    assert "events" in raised.value.error_dict


def test_webhook_update__deactivate__audited_and_pending_retries_abandoned() -> None:
    # Given a webhook with a delivery waiting for its retry
    project = make_project()
    webhook = _webhook(project)
    (delivery,) = _dispatch(project)
    # When it is deactivated
    services.webhook_update(webhook=webhook, active=False, actor=TEST_ACTOR, project_label=project.name)
    # Then the change is audited, and the waiting delivery will not be sent
    event = AuditEvent.objects.get(action="webhook.updated")
    assert event.before == {"active": True} and event.after == {"active": False}
    delivery.refresh_from_db()
    assert delivery.status == "failed" and "deactivated" in delivery.last_error
    # And an update that changes nothing writes nothing
    services.webhook_update(webhook=webhook, active=False, actor=TEST_ACTOR)
    assert AuditEvent.objects.filter(action="webhook.updated").count() == 1


def test_webhook_update__url_changed_in_its_path__audit_shows_a_new_fingerprint() -> None:
    project = make_project()
    webhook = _webhook(project, url="https://hooks.example.com/old-token")
    services.webhook_update(webhook=webhook, url="https://hooks.example.com/new-token", actor=TEST_ACTOR)
    event = AuditEvent.objects.get(action="webhook.updated")
    assert set(event.after) == {"url_fingerprint"} and event.before != event.after
    with pytest.raises(ValidationError):
        services.webhook_update(webhook=webhook, secret="chosen", actor=TEST_ACTOR)


def test_webhook_delete__audited_with_its_label__deliveries_gone() -> None:
    project = make_project()
    webhook = _webhook(project, description="Release bot")
    _dispatch(project)
    services.webhook_delete(webhook=webhook, actor=TEST_ACTOR, project_label=project.name, reason="retired")
    event = AuditEvent.objects.get(action="webhook.deleted")
    assert event.target_label == "Release bot" and event.reason == "retired" and event.project_id == project.pk
    assert not Webhook.objects.exists() and not WebhookDelivery.objects.exists()


# --- dispatch ------------------------------------------------------------------------------


def test_dispatch__subscriptions__one_delivery_per_active_matching_webhook_after_commit(
    enqueued: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    # Given webhooks for flags, for everything, for segments, an inactive one, and another project's
    project, other = make_project("one"), make_project("two")
    for_flags = _webhook(project, events=["flag."])
    for_all = _webhook(project)
    _webhook(project, events=["segment."])
    services.webhook_update(webhook=_webhook(project), active=False, actor=TEST_ACTOR)
    _webhook(other)
    # When a flag event is dispatched and the caller commits
    with django_capture_on_commit_callbacks(execute=True):
        deliveries = _dispatch(project, "flag.updated", flag="tool_mode")
        # (nothing is handed to Celery before the commit)
        assert enqueued == []
    # Then the flag and catch-all webhooks each get one delivery, handed to Celery after commit
    assert {d.webhook_id for d in deliveries} == {for_flags.pk, for_all.pk}
    assert sorted(enqueued) == sorted(d.pk for d in deliveries)
    delivery = deliveries[0]
    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.attempts == 0 and delivery.next_attempt_at <= timezone.now()
    assert delivery.payload == {"id": str(delivery.uuid), "event": "flag.updated", "project_id": project.pk,
                                "created_at": delivery.created_at.isoformat(), "data": {"flag": "tool_mode"}}


def test_dispatch__caller_rolls_back__no_delivery_and_nothing_enqueued(
    enqueued: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    project = make_project()
    _webhook(project)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            services.dispatch(project_id=project.pk, event="flag.updated", payload={})
            raise RuntimeError("the change failed")
    assert not WebhookDelivery.objects.exists() and callbacks == [] and enqueued == []


def test_dispatch__bad_event_name__refused() -> None:
    project = make_project()
    with pytest.raises(ValidationError):
        services.dispatch(project_id=project.pk, event="Flag Updated", payload={})


def test_dispatch__payload_with_dates__stored_as_sent(enqueued: list[int]) -> None:
    project = make_project()
    _webhook(project)
    (delivery,) = _dispatch(project, "reminder.review_due", due=datetime.date(2030, 1, 2))
    delivery.refresh_from_db()
    assert delivery.payload["data"] == {"due": "2030-01-02"}


def test_dispatch__broker_down__caller_unaffected_and_sweep_delivers(
    receiver: Receiver, allow_loopback: Any, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a broker that refuses connections
    def broker_down(delivery_id: int) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.deliver_webhook, "delay", broker_down)
    project = make_project()
    _webhook(project, url=receiver.url)
    # When an event is dispatched and the caller commits
    with caplog.at_level(logging.WARNING, logger="webhooks.services"), django_capture_on_commit_callbacks(execute=True):
        (delivery,) = _dispatch(project)
    # Then the caller saw no error, the outage is logged, and the row waits
    assert "the sweep will retry" in caplog.text
    delivery.refresh_from_db()
    assert delivery.status == "pending" and receiver.received == []
    # And the beat's sweep delivers it
    assert tasks.retry_due_webhooks() == 1
    delivery.refresh_from_db()
    assert delivery.status == "succeeded" and len(receiver.received) == 1


def test_send_test__one_webhook_whatever_it_subscribes_to__inactive_refused(enqueued: list[int]) -> None:
    project = make_project()
    only_segments = _webhook(project, events=["segment."])
    _webhook(project)
    delivery = services.webhook_send_test(webhook=only_segments, actor=TEST_ACTOR)
    assert delivery.event == "webhook.test" and delivery.webhook_id == only_segments.pk
    assert WebhookDelivery.objects.count() == 1
    services.webhook_update(webhook=only_segments, active=False, actor=TEST_ACTOR)
    with pytest.raises(ValidationError, match="inactive"):
        services.webhook_send_test(webhook=only_segments, actor=TEST_ACTOR)


# --- delivery ------------------------------------------------------------------------------


def test_deliver__receiver_answers_200__signed_json_with_event_headers(receiver: Receiver, allow_loopback: Any) -> None:
    # Given a webhook pointing at a real HTTP receiver, and a dispatched event
    project = make_project()
    webhook, secret = services.webhook_create(project_id=project.pk, url=receiver.url, events=[], actor=TEST_ACTOR)
    (delivery,) = _dispatch(project, "targeting.updated", flag="tool_mode")
    # When the task runs
    assert tasks.deliver_webhook(delivery.pk) == "succeeded"
    # Then the receiver got the canonical JSON envelope with the event headers
    (request,) = receiver.received
    delivery.refresh_from_db()
    assert request.path == "/hooks/featureops"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-featureops-event"] == "targeting.updated"
    assert request.headers["x-featureops-delivery"] == str(delivery.uuid)
    assert request.body == canonical_body(delivery.payload)
    assert json.loads(request.body)["data"] == {"flag": "tool_mode"}
    # And a receiver holding the secret can verify the signature
    assert request.headers["x-featureops-signature"].startswith("sha256=")
    assert verify(secret, request.headers["x-featureops-timestamp"], request.body,
                  request.headers["x-featureops-signature"])
    assert not verify("wrong", request.headers["x-featureops-timestamp"], request.body,
                      request.headers["x-featureops-signature"])
    # And the log says so; a second run sends nothing more
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("succeeded", 1, 200)
    assert delivery.delivered_at is not None and delivery.next_attempt_at is None
    assert tasks.deliver_webhook(delivery.pk) is None and len(receiver.received) == 1


def test_deliver__receiver_answers_500__retried_with_exponential_backoff_then_failed(
    receiver: Receiver, allow_loopback: Any, fast_webhooks: Any
) -> None:
    # Given a receiver that always answers 500, and at most 3 attempts
    receiver.script = [(500, 0.0)]
    project = make_project()
    _webhook(project, url=receiver.url)
    (delivery,) = _dispatch(project)
    # When the first attempt runs
    started = timezone.now()
    assert services.deliver(delivery_id=delivery.pk) == "pending"
    # Then it waits 30 s for the second
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.last_status_code) == (1, 500) and "HTTP 500" in delivery.last_error
    assert abs((delivery.next_attempt_at - started).total_seconds() - 30) < 5
    # And nothing runs before then, neither the task nor the sweep
    assert services.deliver(delivery_id=delivery.pk) is None and services.deliver_due() == 0
    assert len(receiver.received) == 1
    # When the backoff has passed, the sweep makes the second attempt, which waits 2 min for the third
    _make_due(delivery)
    started = timezone.now()
    assert services.deliver_due() == 1
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and delivery.status == "pending"
    assert abs((delivery.next_attempt_at - started).total_seconds() - 120) < 5
    # And after the third failure the delivery is failed, for good
    _make_due(delivery)
    assert services.deliver_due() == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("failed", 3, None)
    assert services.deliver_due() == 0 and len(receiver.received) == 3


def test_deliver__fails_then_succeeds__delivered_on_the_retry(receiver: Receiver, allow_loopback: Any, fast_webhooks: Any) -> None:
    receiver.script = [(503, 0.0), (204, 0.0)]
    project = make_project()
    _webhook(project, url=receiver.url)
    (delivery,) = _dispatch(project)
    assert services.deliver(delivery_id=delivery.pk) == "pending"
    _make_due(delivery)
    assert services.deliver(delivery_id=delivery.pk) == "succeeded"
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.last_status_code, delivery.last_error) == (2, 204, "")
    # The retry carried the same delivery id and body, freshly signed
    first, second = receiver.received
    assert first.body == second.body and first.headers["x-featureops-delivery"] == second.headers["x-featureops-delivery"]


def test_deliver__receiver_too_slow__timeout_counts_as_a_failed_attempt(receiver: Receiver, allow_loopback: Any, fast_webhooks: Any) -> None:
    # Given a receiver slower than the 0.5 s timeout
    receiver.script = [(200, 2.0)]
    project = make_project()
    _webhook(project, url=receiver.url)
    (delivery,) = _dispatch(project)
    # When attempted until the attempts run out
    for _ in range(3):
        _make_due(delivery)
        services.deliver(delivery_id=delivery.pk)
    # Then each attempt timed out and the delivery failed
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 3, None)
    assert "timed out" in delivery.last_error.lower()


def test_deliver__redirect__not_followed_and_counted_as_failure(receiver: Receiver, allow_loopback: Any, fast_webhooks: Any) -> None:
    receiver.script = [(302, 0.0)]
    project = make_project()
    _webhook(project, url=receiver.url)
    (delivery,) = _dispatch(project)
    assert services.deliver(delivery_id=delivery.pk) == "pending"
    delivery.refresh_from_db()
    assert delivery.last_status_code == 302 and len(receiver.received) == 1


def test_deliver__nobody_listening__connection_error_recorded(fast_webhooks: Any, allow_loopback: Any) -> None:
    project = make_project()
    _webhook(project, url=f"http://127.0.0.1:{free_port()}/hook")
    (delivery,) = _dispatch(project)
    assert services.deliver(delivery_id=delivery.pk) == "pending"
    delivery.refresh_from_db()
    assert delivery.last_status_code is None and "Could not connect" in delivery.last_error


def test_sweep__last_attempt_claimed_but_never_recorded__closed_as_failed(fast_webhooks: Any) -> None:
    # Given a delivery whose third and last attempt was claimed by a worker that then died
    project = make_project()
    _webhook(project)
    (delivery,) = _dispatch(project)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=3, next_attempt_at=timezone.now())
    # When the sweep runs after the claim's lease
    services.deliver_due()
    # Then the delivery is failed, saying why
    delivery.refresh_from_db()
    assert delivery.status == "failed" and "never recorded" in delivery.last_error


def test_deliver__webhook_deactivated_after_dispatch__failed_without_a_request(receiver: Receiver, allow_loopback: Any) -> None:
    project = make_project()
    webhook = _webhook(project, url=receiver.url)
    (delivery,) = _dispatch(project)
    Webhook.objects.filter(pk=webhook.pk).update(active=False)
    assert services.deliver(delivery_id=delivery.pk) == "failed"
    assert receiver.received == []


def test_deliver__delivery_gone__nothing_to_do() -> None:
    assert tasks.deliver_webhook(10**9) is None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_races__same_attempt_by_many_workers__sent_once(receiver: Receiver, allow_loopback: Any) -> None:
    # Given a due delivery and a receiver slow enough for the attempts to overlap
    receiver.script = [(200, 0.3)]
    project = make_project()
    _webhook(project, url=receiver.url)
    (delivery,) = _dispatch(project)

    # When the on-commit task, redelivered copies of it and two sweeps all run at once
    calls = [lambda: services.deliver(delivery_id=delivery.pk)] * 4 + [lambda: str(services.deliver_due())] * 2
    outcomes, errors = run_together(*calls)
    # Then exactly one of them sent it, once
    assert len(receiver.received) == 1
    made = [str(outcome) for outcome in outcomes]
    assert len(made) == 6 and made.count("succeeded") + made.count("1") == 1, errors
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("succeeded", 1)
