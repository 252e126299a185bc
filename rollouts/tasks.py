from __future__ import annotations

from celery import shared_task

from rollouts.change_control.applying import apply_due_change_requests, expire_undecided_change_requests


@shared_task(name="rollouts.tasks.apply_scheduled_changes")
def apply_scheduled_changes() -> int:
    """Beat: apply approved requests whose scheduled time has come (same checks as by hand)."""
    return apply_due_change_requests()


@shared_task(name="rollouts.tasks.expire_undecided_changes")
def expire_undecided_changes() -> int:
    """Beat: requests left undecided past their environment's expiry are closed."""
    return expire_undecided_change_requests()


@shared_task(name="rollouts.tasks.check_guardrails")
def check_guardrails() -> int:
    """Beat: judge every running rollout plan's current stage; a red guardrail pauses (or
    rolls back) the plan as the system. Returns how many breached."""
    from rollouts.plans.breaches import check_guardrails as sweep

    return sweep()
