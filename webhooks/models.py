"""Project webhooks and their deliveries.

A leaf app: it imports no app of ours except `audit`, so `flags` and `rollouts` may call it.
That is why a webhook keeps its project as a plain id (`project_id`) rather than a foreign
key to `flags.Project`, as audit rows do: the console loads the project first and only ever
asks for that project's webhooks. Nothing deletes projects today; a service that does must
delete their webhooks too.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import URLValidator
from django.db import models
from django.utils import timezone

from webhooks.constants import EVENT_PREFIX_VALUES, DeliveryStatus

URL_MAX_LENGTH = 500

webhook_url_validator = URLValidator(schemes=["http", "https"],
                                     message="Enter an http:// or https:// address, such as https://example.com/hooks.")


def validate_event_prefixes(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError("Events must be a list of event families.")
    unknown = sorted(set(value) - EVENT_PREFIX_VALUES)
    if unknown:
        raise ValidationError(f"Unknown event families: {', '.join(unknown)}.")
    if len(set(value)) != len(value):
        raise ValidationError("An event family is listed twice.")


def redacted_url(url: str) -> str:
    """The address without path, query or credentials, for audit rows and labels: chat and
    automation services put their token in the path (…/hooks/T000/B000/XXXX)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{host}{rest}"


class Webhook(models.Model):
    # A plain id, not a foreign key: see the module docstring.
    project_id = models.PositiveBigIntegerField(db_index=True)
    url = models.CharField("URL", max_length=URL_MAX_LENGTH, validators=[webhook_url_validator])
    # Needed in clear to sign each delivery, so it is stored; the console shows it once, at
    # creation, and the admin never.
    secret = models.CharField(max_length=100)
    # Event-name prefixes such as "flag." or "change_request."; an empty list means every event.
    events = models.JSONField(default=list, blank=True, validators=[validate_event_prefixes])
    active = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.description or redacted_url(self.url)

    def subscribes_to(self, event: str) -> bool:
        return not self.events or any(event.startswith(prefix) for prefix in self.events)


class WebhookDelivery(models.Model):
    """One event for one webhook: the exact JSON sent, and how its attempts went."""

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    # The receiver's idempotency key (X-FeatureOps-Delivery, and `id` in the body): a retry
    # after an answer that never reached us sends the same id again.
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    event = models.CharField(max_length=64)
    # The whole envelope as sent ({"id", "event", "created_at", "project_id", "data"}).
    payload = models.JSONField(encoder=DjangoJSONEncoder)
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # When a pending delivery may next be attempted. Claiming an attempt moves it forward to
    # when the attempt after it is due, so a worker lost mid-attempt is retried by the sweep.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Set by dispatch to the same instant as the envelope's created_at.
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The retry sweep's question, "pending and due", stays cheap however long the log grows.
            models.Index(fields=["next_attempt_at"], condition=models.Q(status="pending"), name="webhook_delivery_due"),
            # The console's delivery log: newest first per webhook.
            models.Index(fields=["webhook", "-id"], name="webhook_delivery_recent"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=DeliveryStatus.values), name="webhook_delivery_status"),
        ]

    def __str__(self) -> str:
        return f"{self.event} → webhook {self.webhook_id} ({self.status})"
