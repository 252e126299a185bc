"""Thin Celery tasks over webhooks.services; both are safe to run twice or at once."""

from __future__ import annotations

from celery import shared_task

from webhooks import services


@shared_task(name="webhooks.tasks.deliver_webhook")
def deliver_webhook(delivery_id: int) -> str | None:
    """Enqueued on commit by services.dispatch: make the first attempt of this delivery."""
    return services.deliver(delivery_id=delivery_id)


@shared_task(name="webhooks.tasks.retry_due_webhooks")
def retry_due_webhooks() -> int:
    """Beat: make every due attempt (retries after their backoff, and what the on-commit task missed)."""
    return services.deliver_due()
