"""Guardrails on a schedule: the beat sweep judges each running plan's current stage and, on
a red guardrail, records the breach, pauses the plan (or rolls it back, as it says) as the
system, and tells the flag's owner and the approvers."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse

from audit.constants import AuditAction
from audit.services import SystemActor
from flags.permissions import holders_of
from notifications.services import notify
from rollouts.models import RolloutPlan
from rollouts.plans.design import plan_stages
from rollouts.plans.guardrails import RED
from rollouts.plans.measurement import plan_evidence
from rollouts.plans.transitions import Action, Status, audit, decide, locked, pause_locked, rollback_locked, sync_locked

logger = logging.getLogger(__name__)


GUARDRAILS = SystemActor("guardrails")


def _plan_url(plan: RolloutPlan) -> str:
    return reverse("rollouts:plan_detail", kwargs={"project_key": plan.project.key, "pk": plan.pk})


@transaction.atomic
def plan_guardrails_check(*, plan: RolloutPlan) -> bool:
    """Judge a running plan's current stage; on a red guardrail record the breach, pause the
    plan (or roll it back, as the plan says) as the system, and tell the owner and the
    approvers. Returns whether it breached."""
    plan = locked(plan)
    stages = plan_stages(plan)
    sync_locked(plan, stages)
    if plan.status != Status.RUNNING or plan.stage_index < 0:
        return False
    evidence = plan_evidence(plan, stages=stages)
    red = [g["message"] for g in evidence["guardrails"] if g["status"] == RED]
    if not red:
        return False
    reason = "Guardrail breached: " + "; ".join(red)
    decide(plan, Action.BREACH, GUARDRAILS, reason, evidence=evidence)
    audit(plan, AuditAction.PLAN_BREACHED, GUARDRAILS, f"{plan.flag.key} in {plan.environment.name}, stage "
                                                        f"{plan.stage_index + 1}: {'; '.join(red)}", reason)
    outcome = ""
    if plan.on_breach == RolloutPlan.OnBreach.ROLLBACK:
        try:
            with transaction.atomic():
                rollback_locked(plan, reason=reason, actor=GUARDRAILS, evidence=evidence)
            outcome = f"rolled back to {plan.baseline}"
        except ValidationError as exc:  # e.g. the baseline is riskier than what is served: never wait
            plan.refresh_from_db(fields=["status", "pending_change_request", "updated_at"])
            logger.warning("Roll-back of rollout plan %s on a breach refused (%s); pausing instead", plan.pk, exc)
            reason = (f"{reason}. Rolling back to {plan.baseline} would need approval here, so the plan was "
                      "paused instead.")
    if not outcome:
        pause_locked(plan, reason=reason, actor=GUARDRAILS, evidence=evidence)
        outcome = "paused"
    title = f"Guardrail breach: {plan.flag.key} in {plan.environment.name} {outcome}"
    recipients = [plan.flag.owner_user, *holders_of(plan.project, "approve_change")]
    notify(recipients=recipients, kind="plan.breached", title=title, body=reason, url=_plan_url(plan))
    return True


def check_guardrails() -> int:
    """The beat sweep: every running plan, each in its own transaction. Returns how many
    breached."""
    breached = 0
    for plan in RolloutPlan.objects.filter(status__in=(Status.RUNNING,)).only("pk").order_by("pk"):
        try:
            breached += plan_guardrails_check(plan=plan)
        except Exception:  # one plan's failure must not stop the others' checks
            logger.exception("Guardrail check of rollout plan %s failed; the next sweep retries", plan.pk)
    return breached
