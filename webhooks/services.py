"""Writes: configure webhooks (audited), dispatch events, deliver them.

A delivery is a side effect, never the record of a change: the caller's audit row is.
`dispatch` runs inside the caller's transaction (a rolled-back change sends nothing) and
hands each delivery to Celery only after commit. Each attempt is claimed with a conditional
UPDATE before the request goes out, so the on-commit task, the beat sweep and a redelivered
task never send the same attempt twice. Failures are retried with exponential backoff by the
sweep (`deliver_due`), then marked failed; nothing on this path reaches the caller.

Where an attempt may connect, and how, is `webhooks.egress`: public addresses only (or the
operator's WEBHOOK_ALLOWED_NETWORKS), resolved once and checked, and nothing of the answer
kept but its status code. Configuration checks the URL too (`_check_destination`).

Delivery is at least once: a worker killed after the receiver answered but before the result
was saved sends that attempt again later, with the same delivery id for the receiver to
deduplicate on.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Case, F, TextField, Value, When
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import Actor, AuditTarget, actor_label, record
from audit.validators import check_text_limit
from webhooks import egress
from webhooks.constants import SECRET_BYTES, TEST_EVENT, DeliveryStatus
from webhooks.models import Webhook, WebhookDelivery, redacted_url
from webhooks.signing import canonical_body, sign

logger = logging.getLogger(__name__)

# Waits after failed attempt 1, 2, 3…: 30 s, 2 min, 8 min, 32 min, 2 h 8 min.
RETRY_BASE = datetime.timedelta(seconds=30)
RETRY_FACTOR = 4
# A claimed attempt is not due again before its request could have timed out, plus this.
LEASE_MARGIN = datetime.timedelta(seconds=10)
# The sweep stops starting new attempts after this long, so a run ends before the next beat.
SWEEP_BUDGET_SECONDS = 20.0
SWEEP_BATCH_SIZE = 200
USER_AGENT = "FeatureOps-Webhooks/1"

event_name = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+\Z")

WEBHOOK_EDITABLE_FIELDS = frozenset({"url", "events", "description", "active"})


# --- configuration (audited) ---------------------------------------------------------------


def _project_target(project_id: int, project_label: str) -> AuditTarget:
    return AuditTarget("flags.project", project_id, project_label or f"project {project_id}")


def _state(webhook: Webhook) -> dict[str, Any]:
    # The URL is redacted (tokens often live in its path, and audit rows are exported); the
    # fingerprint still shows that it changed.
    return {"url": redacted_url(webhook.url), "url_fingerprint": hashlib.sha256(webhook.url.encode()).hexdigest()[:12],
            "events": list(webhook.events), "active": webhook.active, "description": webhook.description}


def _check_destination(url: str) -> None:
    """Refused beside the URL field: the host is, or resolves to, an address webhooks may not
    reach (see webhooks.egress; each delivery attempt checks again)."""
    try:
        egress.validate_destination(url)
    except ValidationError as exc:
        raise ValidationError({"url": exc.messages}) from None


@transaction.atomic
def webhook_create(*, project_id: int, url: str, events: list[str], description: str = "", actor: Actor,
                   project_label: str = "") -> tuple[Webhook, str]:
    """Create a webhook; the signing secret is returned for the console to show once."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    webhook = Webhook(project_id=project_id, url=url.strip(), secret=secret, events=list(events),
                      description=description.strip(),
                      created_by=actor if isinstance(actor, AbstractBaseUser) else None)
    webhook.full_clean()
    _check_destination(webhook.url)
    webhook.save()
    record(actor=actor, action=AuditAction.WEBHOOK_CREATED, target=webhook,
           project=_project_target(project_id, project_label), after=_state(webhook))
    return webhook, secret


@transaction.atomic
def webhook_update(*, webhook: Webhook, actor: Actor, project_label: str = "", reason: str = "",
                   **changes: Any) -> Webhook:
    """Change a webhook's url, events, description or active flag. A no-op writes nothing.
    Deactivating stops new deliveries and abandons the pending retries."""
    unknown = set(changes) - WEBHOOK_EDITABLE_FIELDS
    if unknown:
        raise ValidationError({name: "Unknown webhook field." for name in sorted(unknown)})
    check_text_limit("reason", reason)
    webhook = Webhook.objects.select_for_update().get(pk=webhook.pk)
    before = _state(webhook)
    raw_before = {name: getattr(webhook, name) for name in changes}
    for name, value in changes.items():
        setattr(webhook, name, value.strip() if isinstance(value, str) else value)
    if all(getattr(webhook, name) == raw_before[name] for name in changes):
        return webhook
    webhook.full_clean()
    if webhook.url != raw_before.get("url", webhook.url):
        _check_destination(webhook.url)
    webhook.save(update_fields=sorted(changes))
    if "active" in changes and not webhook.active:
        WebhookDelivery.objects.filter(webhook=webhook, status=DeliveryStatus.PENDING).update(
            status=DeliveryStatus.FAILED, next_attempt_at=None, last_error="The webhook was deactivated.")
    after = _state(webhook)
    changed = [name for name in after if after[name] != before[name]]
    record(actor=actor, action=AuditAction.WEBHOOK_UPDATED, target=webhook,
           project=_project_target(webhook.project_id, project_label),
           before={k: before[k] for k in changed}, after={k: after[k] for k in changed}, reason=reason)
    return webhook


@transaction.atomic
def webhook_delete(*, webhook: Webhook, actor: Actor, project_label: str = "", reason: str = "") -> None:
    """Delete a webhook with its delivery log."""
    check_text_limit("reason", reason)
    webhook = Webhook.objects.select_for_update().get(pk=webhook.pk)
    label_target = AuditTarget("webhooks.webhook", webhook.pk, str(webhook))
    before = _state(webhook)
    project_id = webhook.project_id
    webhook.delete()
    record(actor=actor, action=AuditAction.WEBHOOK_DELETED, target=label_target,
           project=_project_target(project_id, project_label), before=before, reason=reason)


# --- dispatch ------------------------------------------------------------------------------


def dispatch(*, project_id: int, event: str, payload: dict[str, Any]) -> list[WebhookDelivery]:
    """Queue `event` for every active webhook of the project that subscribes to it.

    Call it inside the transaction of whatever happened: the delivery rows commit or roll
    back with it, and Celery hears of them only after commit. `payload` becomes the
    envelope's `data` and must be JSON-serialisable (dates and decimals become strings).
    """
    if not isinstance(event, str) or len(event) > 64 or not event_name.match(event):
        raise ValidationError(f"A webhook event is a lowercase dotted name such as flag.updated, not {event!r}.")
    webhooks = [webhook for webhook in Webhook.objects.filter(project_id=project_id, active=True)
                if webhook.subscribes_to(event)]
    return _queue(webhooks, event=event, project_id=project_id, payload=payload)


def webhook_send_test(*, webhook: Webhook, actor: Actor) -> WebhookDelivery:
    """Queue a `webhook.test` event for this one webhook, whatever it subscribes to."""
    with transaction.atomic():
        # Locked against a concurrent deactivation, which abandons pending deliveries.
        webhook = Webhook.objects.select_for_update().get(pk=webhook.pk)
        if not webhook.active:
            raise ValidationError("This webhook is inactive: activate it before sending a test event.")
        payload = {"message": "A test event from FeatureOps Console.", "webhook_id": webhook.pk,
                   "sent_by": actor_label(actor)}
        (delivery,) = _queue([webhook], event=TEST_EVENT, project_id=webhook.project_id, payload=payload)
    return delivery


def _queue(webhooks: Iterable[Webhook], *, event: str, project_id: int, payload: dict[str, Any]) -> list[WebhookDelivery]:
    webhooks = list(webhooks)
    if not webhooks:
        return []
    now = timezone.now()
    # Serialised once here, so the row holds exactly what every attempt sends.
    data = json.loads(json.dumps(payload, cls=DjangoJSONEncoder))
    deliveries = []
    for webhook in webhooks:
        delivery = WebhookDelivery(webhook=webhook, event=event, next_attempt_at=now, created_at=now)
        delivery.payload = {"id": str(delivery.uuid), "event": event, "created_at": now.isoformat(),
                            "project_id": project_id, "data": data}
        deliveries.append(delivery)
    created = WebhookDelivery.objects.bulk_create(deliveries)
    ids = [delivery.pk for delivery in created]
    transaction.on_commit(lambda: _enqueue(ids), robust=True)
    return created


def _enqueue(delivery_ids: list[int]) -> None:
    # Imported here: the task module imports this one.
    from webhooks.tasks import deliver_webhook

    for position, delivery_id in enumerate(delivery_ids):
        try:
            deliver_webhook.delay(delivery_id)
        except Exception:
            # The broker is unreachable. The rows stay pending and due; the sweep sends them.
            # The rest are not tried: each try can block the caller for the broker's retries.
            logger.warning("Could not enqueue webhook deliveries %s; the sweep will retry.",
                           delivery_ids[position:], exc_info=True)
            return


# --- delivery ------------------------------------------------------------------------------


def retry_delay(attempt: int) -> datetime.timedelta:
    """How long after failed attempt `attempt` (1-based) the next one is due."""
    return RETRY_BASE * RETRY_FACTOR ** (attempt - 1)


def _timeout() -> float:
    return float(settings.WEBHOOK_TIMEOUT_SECONDS)


def _max_attempts() -> int:
    return int(settings.WEBHOOK_MAX_ATTEMPTS)


def deliver(*, delivery_id: int) -> str | None:
    """Make the next attempt of one delivery if it is due and nobody else is making it.

    Returns the delivery's status after this run's attempt, or None when this run did
    nothing: the row is gone or finished, not due yet, or another run claimed the attempt.
    """
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != DeliveryStatus.PENDING:
        return None
    now = timezone.now()
    if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
        return None  # not due: the sweep makes it when it is
    if not delivery.webhook.active:
        WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.PENDING).update(
            status=DeliveryStatus.FAILED, next_attempt_at=None, last_error="The webhook was deactivated.")
        return DeliveryStatus.FAILED
    attempt = delivery.attempts + 1
    if attempt > _max_attempts():
        return None  # the sweep closes it
    # The claim: one run moves (attempts, next_attempt_at) on; any other run's UPDATE then
    # matches no row. next_attempt_at becomes the retry time, so if this worker dies
    # mid-attempt the sweep tries again then.
    retry_at = now + max(retry_delay(attempt), datetime.timedelta(seconds=_timeout()) + LEASE_MARGIN)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery.pk, status=DeliveryStatus.PENDING, attempts=delivery.attempts, next_attempt_at__lte=now,
    ).update(attempts=attempt, next_attempt_at=retry_at)
    if not claimed:
        return None
    status_code, error = _post(delivery.webhook, delivery)
    result: dict[str, Any] = {"last_status_code": status_code, "last_error": error[:2000]}
    if status_code is not None and 200 <= status_code < 300:
        result.update(status=DeliveryStatus.SUCCEEDED, delivered_at=timezone.now(), next_attempt_at=None,
                      last_error="")
    elif attempt >= _max_attempts():
        result.update(status=DeliveryStatus.FAILED, next_attempt_at=None)
    else:
        result["status"] = DeliveryStatus.PENDING  # due again at retry_at
        logger.info("Webhook delivery %s attempt %s failed (%s); retrying at %s.", delivery.pk, attempt,
                    error, retry_at.isoformat())
    # Conditional on our claim: a result never overwrites a later attempt's.
    WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.PENDING, attempts=attempt).update(**result)
    return result["status"]


def _post(webhook: Webhook, delivery: WebhookDelivery) -> tuple[int | None, str]:
    """POST the signed envelope to a checked address (webhooks.egress). Returns (HTTP status
    or None, error text or "")."""
    body = canonical_body(delivery.payload)
    timestamp = str(int(time.time()))
    return egress.post(webhook.url, body=body, timeout=_timeout(), headers={
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-FeatureOps-Event": delivery.event,
        "X-FeatureOps-Delivery": str(delivery.uuid),
        "X-FeatureOps-Timestamp": timestamp,
        "X-FeatureOps-Signature": sign(webhook.secret, timestamp, body),
    })


def deliver_due(*, budget_seconds: float = SWEEP_BUDGET_SECONDS) -> int:
    """The sweep: make every due attempt (new rows the on-commit task missed, and retries
    whose backoff has passed), oldest first, until the time budget runs out. Returns how many
    attempts it made. Safe to run concurrently with itself and with the tasks."""
    now = timezone.now()
    # Rows whose last attempt was claimed but never recorded (the worker died) are closed.
    WebhookDelivery.objects.filter(
        status=DeliveryStatus.PENDING, attempts__gte=_max_attempts(), next_attempt_at__lte=now,
    ).update(status=DeliveryStatus.FAILED, next_attempt_at=None, last_error=Case(
        When(last_error="", then=Value("The last attempt was never recorded (the worker stopped).")),
        default=F("last_error"), output_field=TextField()))
    due = list(WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
               .order_by("next_attempt_at", "pk").values_list("pk", flat=True)[:SWEEP_BATCH_SIZE])
    started = time.monotonic()
    attempted = 0
    for delivery_id in due:
        if time.monotonic() - started > budget_seconds:
            break  # the next beat carries on
        if deliver(delivery_id=delivery_id) is not None:
            attempted += 1
    return attempted
