"""Guardrails on a schedule: the beat sweep judges each running plan's current stage.

- Evidence that cannot be trusted (a sample ratio mismatch: rollouts.plans.measurement) pauses
  the plan without changing traffic, and no guardrail verdict on it counts as a breach.
- A red guardrail records the breach and stops the harm as the plan says: by default it steps
  back (stage k > 0 returns at once to stage k − 1's targeting and pauses there; the first stage
  rolls back to the baseline), or rolls back, or only pauses. A move the environment's policy
  would hold for approval is never left waiting: the plan pauses instead and says why.
All as the system, in the plan's transaction; the flag's owner and the approvers are told.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

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
from rollouts.plans.transitions import (
    Action,
    Status,
    audit,
    decide,
    locked,
    pause_locked,
    rollback_locked,
    step_back_locked,
    sync_locked,
)

logger = logging.getLogger(__name__)


GUARDRAILS = SystemActor("guardrails")


OnBreach = RolloutPlan.OnBreach


def _plan_url(plan: RolloutPlan) -> str:
    return reverse("rollouts:plan_detail", kwargs={"project_key": plan.project.key, "pk": plan.pk})


def _tell(plan: RolloutPlan, *, kind: str, title: str, body: str) -> None:
    recipients = [plan.flag.owner_user, *holders_of(plan.project, "approve_change")]
    notify(recipients=recipients, kind=kind, title=title, body=body, url=_plan_url(plan))


def _attempt(plan: RolloutPlan, move: Callable[..., RolloutPlan], *, reason: str, evidence: dict[str, Any]) -> str:
    """Run a traffic move in a savepoint. Answers "" when it went through, else why it was
    refused (nothing of it is kept, and the plan's fields are read back as they were)."""
    try:
        with transaction.atomic():
            move(plan, reason=reason, actor=GUARDRAILS, evidence=evidence)
        return ""
    except ValidationError as exc:  # e.g. the move would need approval here: never wait
        plan.refresh_from_db(fields=["status", "stage_index", "stage_entered_at", "pending_change_request",
                                     "updated_at"])
        refusal = " ".join(exc.messages).rstrip(".")
        logger.warning("%s of rollout plan %s on a breach refused (%s); pausing instead", move.__name__, plan.pk,
                       refusal)
        return refusal


def _stop_harm(plan: RolloutPlan, reason: str, evidence: dict[str, Any]) -> tuple[str, str]:
    """Apply the plan's breach action; answers (what happened, in words for a title; the
    reason, with why the plan was only paused when the move was refused)."""
    if plan.on_breach == OnBreach.STEP_BACK and plan.stage_index > 0:
        previous = plan_stages(plan)[plan.stage_index - 1]
        refusal = _attempt(plan, step_back_locked, reason=reason, evidence=evidence)
        if not refusal:
            return f"stepped back to stage {plan.stage_index + 1} ({previous.name})", reason
        reason = f"{reason}. {refusal}, so the plan was paused instead."
    elif plan.on_breach in (OnBreach.ROLLBACK, OnBreach.STEP_BACK):  # from the first stage, back is the baseline
        if not _attempt(plan, rollback_locked, reason=reason, evidence=evidence):
            return f"rolled back to {plan.baseline}", reason
        reason = (f"{reason}. Rolling back to {plan.baseline} would need approval here, so the plan was "
                  "paused instead.")
    pause_locked(plan, reason=reason, actor=GUARDRAILS, evidence=evidence)
    return f"paused at stage {plan.stage_index + 1}", reason


@transaction.atomic
def plan_guardrails_check(*, plan: RolloutPlan) -> bool:
    """Judge a running plan's current stage (module docstring): pause it on a sample ratio
    mismatch; on a red guardrail record the breach and step back, roll back or pause as the
    plan says. Returns whether it breached."""
    plan = locked(plan)
    stages = plan_stages(plan)
    sync_locked(plan, stages)
    if plan.status != Status.RUNNING or plan.stage_index < 0:
        return False
    evidence = plan_evidence(plan, stages=stages)
    where = f"{plan.flag.key} in {plan.environment.name}"
    if evidence.get("untrustworthy"):
        reason = f"Sample ratio mismatch: {evidence['sample_ratio']['message']}"
        pause_locked(plan, reason=reason, actor=GUARDRAILS, evidence=evidence)
        _tell(plan, kind="plan.sample_ratio", body=reason,
              title=f"Sample ratio mismatch: {where} paused at stage {plan.stage_index + 1} "
                    f"({stages[plan.stage_index].name})")
        return False
    red = [g["message"] for g in evidence["guardrails"] if g["status"] == RED]
    if not red:
        return False
    reason = "Guardrail breached: " + "; ".join(red)
    decide(plan, Action.BREACH, GUARDRAILS, reason, evidence=evidence)
    audit(plan, AuditAction.PLAN_BREACHED, GUARDRAILS, f"{where}, stage {plan.stage_index + 1}: {'; '.join(red)}",
          reason)
    outcome, reason = _stop_harm(plan, reason, evidence)
    _tell(plan, kind="plan.breached", title=f"Guardrail breach: {where} {outcome}", body=reason)
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
