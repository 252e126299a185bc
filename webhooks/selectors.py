"""Reads for the console: a project's webhooks and its recent deliveries."""

from __future__ import annotations

from django.db.models import QuerySet

from webhooks.models import Webhook, WebhookDelivery

DELIVERY_LOG_LENGTH = 100


def project_webhooks(*, project_id: int) -> QuerySet[Webhook]:
    return Webhook.objects.filter(project_id=project_id).select_related("created_by").order_by("id")


def recent_deliveries(*, project_id: int, limit: int = DELIVERY_LOG_LENGTH) -> list[WebhookDelivery]:
    """The project's latest deliveries, newest first (the payloads stay in the database)."""
    return list(WebhookDelivery.objects.filter(webhook__project_id=project_id).select_related("webhook")
                .defer("payload").order_by("-id")[:limit])


def has_subscribers(*, project_id: int, event: str) -> bool:
    """Whether any active webhook of the project would receive `event` (one small query)."""
    return any(not prefixes or any(event.startswith(prefix) for prefix in prefixes)
               for prefixes in Webhook.objects.filter(project_id=project_id, active=True)
               .values_list("events", flat=True))
