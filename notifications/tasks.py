"""Thin Celery tasks over notifications.services; both are safe to run twice."""

from __future__ import annotations

from celery import shared_task

from notifications import services


@shared_task(name="notifications.tasks.send_notification_emails")
def send_notification_emails(ids: list[int]) -> int:
    """Enqueued on commit by services.notify: email these notifications (each at most once)."""
    return services.send_emails(notification_ids=ids)


@shared_task(name="notifications.tasks.send_pending_notification_emails")
def send_pending_notification_emails() -> int:
    """Beat: email what the on-commit task missed (broker down, failed send) within the last day."""
    return services.send_pending_emails()
