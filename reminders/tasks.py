"""The reminder jobs (beat schedule in settings; both on the reminders queue)."""

from __future__ import annotations

from celery import shared_task

from reminders.sweep import deliver, deliver_pending, sweep


@shared_task(name="reminders.tasks.send_reminders")
def send_reminders() -> int:
    """Beat: decide and claim due reminders, enqueue their delivery; deliver any claimed rows
    a lost task left behind. Returns how many this run claimed."""
    claimed = len(sweep())
    deliver_pending()
    return claimed


@shared_task(name="reminders.tasks.deliver_reminders", acks_late=True)
def deliver_reminders(ids: list[int]) -> int:
    """Deliver a batch of claimed reminders (idempotent: each row is claimed before sending)."""
    return deliver(ids)
