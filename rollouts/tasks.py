from __future__ import annotations

from celery import shared_task

from rollouts.services import apply_due_change_requests, expire_undecided_change_requests


@shared_task(name="rollouts.tasks.apply_scheduled_changes")
def apply_scheduled_changes() -> int:
    """Beat: apply approved requests whose scheduled time has come (same checks as by hand)."""
    return apply_due_change_requests()


@shared_task(name="rollouts.tasks.expire_undecided_changes")
def expire_undecided_changes() -> int:
    """Beat: requests left undecided past their environment's expiry are closed."""
    return expire_undecided_change_requests()


@shared_task(name="rollouts.tasks.send_reminders")
def send_reminders() -> int:
    """Beat: decide and claim due reminders, enqueue their delivery; deliver any claimed rows
    a lost task left behind. Returns how many this run claimed."""
    from rollouts.reminders import deliver_pending, sweep

    claimed = len(sweep())
    deliver_pending()
    return claimed


@shared_task(name="rollouts.tasks.deliver_reminders", acks_late=True)
def deliver_reminders(ids: list[int]) -> int:
    """Deliver a batch of claimed reminders (idempotent: each row is claimed before sending)."""
    from rollouts.reminders import deliver

    return deliver(ids)


@shared_task(name="rollouts.tasks.check_guardrails")
def check_guardrails() -> int:
    """Beat: judge every running rollout plan's current stage; a red guardrail pauses (or
    rolls back) the plan as the system. Returns how many breached."""
    from rollouts.plans import check_guardrails as sweep

    return sweep()
