"""Rollout plans' state machine. Every action locks the plan row, re-checks its status,
changes traffic only through change control's `targeting_change_submit` (so a governed
environment's policy decides apply-now vs change request, like for any change), and writes its
release decision (with the evidence at that moment) and its audit row in the same transaction.

State machine:  draft ─start→ running ─pause→ paused ─resume→ running
                running|paused ─rollback→ rolled_back;  running ─promote→ completed
                running at stage k > 0 ─step back (a breach)→ paused at stage k − 1
A stage entry or promotion that needs approval leaves the plan where it is, with a
`pending_change_request`; `plan_sync` moves it once that request is applied (change control
announces it: rollouts.plans.observers). Stopping or reversing a plan withdraws that request
through change control's `change_request_withdraw`.

Just over 500 lines on purpose: the state machine's transitions share their private steps
(lock, decide, audit, enter, sync, withdraw) and read best in one place.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import Actor, SystemActor, record
from audit.validators import shortened
from flags.models import Targeting
from flags.permissions import INVESTIGATE_PLAN, STEER_PLAN, STOP_PLAN, Rule, steers
from flags.row_states import targeting_state
from rollouts.actors import actor_label, require_reason, user_of
from rollouts.change_control.applying import change_request_withdraw
from rollouts.change_control.submitting import preview_targeting_change, targeting_change_submit
from rollouts.models import ChangeRequest, ReleaseDecision, RolloutPlan, RolloutStage
from rollouts.plans.design import plan_stages, promote_targeting, rollback_targeting, stage_targeting
from rollouts.plans.guardrails import RED
from rollouts.plans.measurement import plan_evidence

logger = logging.getLogger(__name__)


Status = RolloutPlan.Status


Action = ReleaseDecision.Action


PLAN_SYNC = SystemActor("rollout-plans")


CLOSED_REQUEST = (ChangeRequest.Status.REJECTED, ChangeRequest.Status.CANCELLED, ChangeRequest.Status.EXPIRED,
                  ChangeRequest.Status.CONFLICTED)


def _require_reason(reason: str) -> str:
    # Shorter than other reasons: a stage's change request carries it after the plan's context.
    return require_reason((reason or "").strip(), kept="with the decision in the plan's log", limit="plan_reason")


def locked(plan: RolloutPlan) -> RolloutPlan:
    return (RolloutPlan.objects.select_for_update(of=("self",))
            .select_related("flag__owner_user", "flag__fallback_variation", "project", "environment",
                            "pending_change_request")
            .get(pk=plan.pk))


# Owners and editors steer a plan, operators may also stop it, anyone taking part in changes
# may mark it for investigation or close that investigation (its state is judged separately).
RULES: dict[str, Rule] = {
    **dict.fromkeys((Action.START, Action.ADVANCE, Action.PROMOTE, Action.RESUME, Action.DISCARD), STEER_PLAN),
    **dict.fromkeys((Action.PAUSE, Action.ROLLBACK), STOP_PLAN),
    **dict.fromkeys((Action.INVESTIGATE, Action.RESOLVE), INVESTIGATE_PLAN),
}


def may_act(user: Any, plan: RolloutPlan, action: str) -> bool:
    return RULES[action].allows(user, plan)


def _expect(plan: RolloutPlan, allowed: tuple[str, ...], verb: str) -> None:
    if plan.status not in allowed:
        raise ValidationError(f"A {plan.get_status_display().lower()} plan cannot be {verb}.")


def _begin_synced(plan: RolloutPlan, action: str, actor: Actor, reason: str, allowed: tuple[str, ...],
                  verb: str) -> tuple[RolloutPlan, list[RolloutStage], str]:
    """How an action on a running plan starts: lock the plan, ask the action's rule, bring the
    plan up to date with what was applied meanwhile, check its status allows the action, and
    require the reason. Answers the locked plan, its stages and the reason."""
    plan = locked(plan)
    RULES[action].require(actor, plan, system=True)
    stages = plan_stages(plan)
    sync_locked(plan, stages)
    _expect(plan, allowed, verb)
    return plan, stages, _require_reason(reason)


def decide(plan: RolloutPlan, action: str, actor: Actor, reason: str, *, to_stage: int | None = None,
           evidence: dict[str, Any] | None = None, change_request: ChangeRequest | None = None,
           from_stage: int | None = None) -> ReleaseDecision:
    decision = ReleaseDecision(
        plan=plan, action=action, actor=user_of(actor), actor_label=actor_label(actor), reason=reason,
        from_stage=plan.stage_index if from_stage is None else from_stage,
        to_stage=plan.stage_index if to_stage is None else to_stage, evidence=evidence or {},
        change_request=change_request)
    decision.full_clean(exclude=["plan", "actor", "change_request"])
    decision.save()
    return decision


def audit(plan: RolloutPlan, action: AuditAction, actor: Actor, summary: str, reason: str = "",
          before: Any = None, change_request: ChangeRequest | None = None) -> None:
    record(actor=actor, action=action, target=plan, project=plan.project, environment=plan.environment,
           flag=plan.flag, before=before, after=_before(plan), summary=summary, reason=reason, change_request_id=change_request.pk if change_request else None)


def _before(plan: RolloutPlan) -> dict[str, Any]:
    """What the audit row keeps of a plan, before and after each transition."""
    return {"status": plan.status, "stage_index": plan.stage_index, "needs_attention": plan.needs_attention,
            "pending_change_request": plan.pending_change_request_id}


def _conclude(plan: RolloutPlan, action: str, audit_action: AuditAction, actor: Actor, reason: str,
              before: dict[str, Any], summary: str, *, fields: tuple[str, ...],
              evidence: dict[str, Any] | None = None, **stages: int) -> RolloutPlan:
    """How every transition ends, in the caller's transaction: save what changed, log the
    release decision with its evidence, write the audit row."""
    plan.save(update_fields=[*fields, "updated_at"])
    decide(plan, action, actor, reason, evidence=evidence, **stages)
    audit(plan, audit_action, actor, summary, reason, before)
    return plan


def _submit(plan: RolloutPlan, changes: dict[str, Any], *, reason: str, actor: Actor,
            force_request: bool = False) -> Targeting | ChangeRequest:
    targeting = Targeting.objects.get(flag_id=plan.flag_id, environment_id=plan.environment_id)
    return targeting_change_submit(targeting=targeting, changes=changes, reason=reason, actor=actor,
                                   force_request=force_request)


def _promotion_forced(plan: RolloutPlan, stages: list[RolloutStage]) -> bool:
    """Promoting skips the later stages: if one of them needs approval, so does promotion."""
    return any(stage.needs_approval for stage in stages[plan.stage_index + 1:])


def step_opens_request(plan: RolloutPlan, stages: list[RolloutStage], *, promote: bool = False) -> bool:
    """Whether the plan's next step (entering the next stage, or promoting) would open a
    change request rather than apply at once, as submitting it now would decide: a stage
    that needs approval always does; otherwise the environment's policy judges the change."""
    target = plan.stage_index + 1
    if promote:
        if _promotion_forced(plan, stages):
            return True
        changes = promote_targeting(plan, _current_state(plan))
    else:
        if target >= len(stages):
            return False
        if stages[target].needs_approval:
            return True
        changes = stage_targeting(plan, target, _current_state(plan), stages)
    targeting = Targeting.objects.get(flag_id=plan.flag_id, environment_id=plan.environment_id)
    try:
        return not preview_targeting_change(targeting=targeting, changes=changes).applies_now
    except ValidationError:
        return False  # submitting would be refused with its reason; nothing to announce


def _current_state(plan: RolloutPlan) -> dict[str, Any]:
    return targeting_state(Targeting.objects.get(flag_id=plan.flag_id, environment_id=plan.environment_id))


def _enter(plan: RolloutPlan, target: int, *, action: str, reason: str, actor: Actor, stages: list[RolloutStage],
           evidence: dict[str, Any]) -> RolloutPlan:
    """Move traffic to stage `target`, or open the change request that will."""
    stage = stages[target]
    before = _before(plan)
    result = _submit(plan, stage_targeting(plan, target, _current_state(plan), stages),
                     reason=f"Rollout plan {plan.pk}, stage {target + 1} ({stage.name}): {reason}", actor=actor,
                     force_request=stage.needs_approval)
    audit_action = AuditAction.PLAN_STARTED if action == Action.START else AuditAction.PLAN_ADVANCED
    if isinstance(result, ChangeRequest):
        plan.pending_change_request = result
        plan.save(update_fields=["status", "pending_change_request", "updated_at"])
        decide(plan, action, actor, reason, to_stage=target, evidence=evidence, change_request=result)
        audit(plan, AuditAction.PLAN_STARTED if action == Action.START else AuditAction.PLAN_ADVANCE_REQUESTED,
              actor, f"Stage {target + 1} ({stage.name}) of {plan.flag.key} in {plan.environment.name} waits for "
                      f"approval: CR-{result.pk}", reason, before, change_request=result)
        return plan
    from_stage = plan.stage_index
    plan.stage_index, plan.stage_entered_at = target, timezone.now()
    return _conclude(plan, action, audit_action, actor, reason, before,
                     f"{plan.flag.key} in {plan.environment.name} entered stage {target + 1} ({stage.name})",
                     fields=("status", "stage_index", "stage_entered_at"), evidence=evidence,
                     from_stage=from_stage, to_stage=target)


def sync_locked(plan: RolloutPlan, stages: list[RolloutStage]) -> bool:
    """Move a plan whose pending request was applied; forget one that was closed without
    applying. Returns whether the plan changed."""
    change_request = plan.pending_change_request
    if change_request is None:
        return False
    change_request = ChangeRequest.objects.get(pk=change_request.pk)
    before = _before(plan)
    if change_request.status == ChangeRequest.Status.APPLIED:
        requested = plan.decisions.filter(change_request=change_request).order_by("-id").first()
        evidence = plan_evidence(plan, stages=stages)
        plan.pending_change_request = None
        reason = f"CR-{change_request.pk} applied"
        if requested is not None and requested.action == Action.PROMOTE:
            plan.status = Status.COMPLETED
            plan.save(update_fields=["status", "pending_change_request", "updated_at"])
            decide(plan, Action.PROMOTE, PLAN_SYNC, reason, evidence=evidence, change_request=change_request)
            audit(plan, AuditAction.PLAN_PROMOTED, PLAN_SYNC, f"{plan.flag.key} in {plan.environment.name}: "
                  f"{plan.candidate} is the default for everyone ({reason})", before=before,
                  change_request=change_request)
            return True
        target = requested.to_stage if requested is not None else plan.stage_index + 1
        from_stage = plan.stage_index
        plan.stage_index, plan.stage_entered_at = target, change_request.applied_at or timezone.now()
        plan.save(update_fields=["stage_index", "stage_entered_at", "pending_change_request", "updated_at"])
        decide(plan, Action.ADVANCE, PLAN_SYNC, reason, from_stage=from_stage, to_stage=target, evidence=evidence,
               change_request=change_request)
        audit(plan, AuditAction.PLAN_ADVANCED, PLAN_SYNC, f"{plan.flag.key} in {plan.environment.name} entered "
              f"stage {target + 1} ({stages[target].name}) ({reason})", before=before, change_request=change_request)
        return True
    if change_request.status in CLOSED_REQUEST:
        plan.pending_change_request = None
        plan.save(update_fields=["pending_change_request", "updated_at"])
        audit(plan, AuditAction.PLAN_REQUEST_CLOSED, PLAN_SYNC,
              f"CR-{change_request.pk} was {change_request.get_status_display().lower()}: the plan stays at stage "
              f"{plan.stage_index + 1}", before=before, change_request=change_request)
        return True
    return False


def _withdraw_pending(plan: RolloutPlan, actor: Actor, reason: str) -> None:
    """Stopping or reversing a plan withdraws the stage it was waiting to enter."""
    if plan.pending_change_request_id is None:
        return
    change_request = ChangeRequest(pk=plan.pending_change_request_id)
    plan.pending_change_request = None
    change_request_withdraw(change_request=change_request, actor=actor, reason=reason,
                            summary=f"Withdrawn: rollout plan {plan.pk} was stopped")


def _require_on(plan: RolloutPlan, then: str) -> None:
    """A plan moves traffic between variations of a flag that is on; it never turns a flag on
    (a flag may be off because an operator stopped it)."""
    if not Targeting.objects.filter(flag_id=plan.flag_id, environment_id=plan.environment_id, enabled=True).exists():
        raise ValidationError(f"{plan.flag.key} is off in {plan.environment.name}: {then}; a rollout plan never "
                              "turns a flag on.")


def _ready_to_expand(plan: RolloutPlan, stages: list[RolloutStage], evidence: dict[str, Any]) -> None:
    """Refuse expansion before the current stage's bake time, while its evidence cannot be
    trusted (a sample ratio mismatch), or while a guardrail is red."""
    if plan.pending_change_request_id:
        raise ValidationError(f"Waiting for CR-{plan.pending_change_request_id} to be applied.")
    _require_on(plan, "turn it back on through a change first")
    if plan.stage_index < 0:
        return
    stage = stages[plan.stage_index]
    baked_at = plan.stage_entered_at + datetime.timedelta(minutes=stage.min_bake_minutes)
    now = timezone.now()
    if now < baked_at:
        left = int((baked_at - now).total_seconds() // 60) + 1
        raise ValidationError(f"Stage {plan.stage_index + 1} ({stage.name}) bakes for at least "
                              f"{stage.min_bake_minutes} minutes: {left} minute(s) left.")
    if evidence.get("untrustworthy"):
        raise ValidationError(f"Sample ratio mismatch in stage {plan.stage_index + 1} ({stage.name}): "
                              f"{evidence['sample_ratio']['message']}.")
    red = [g["message"] for g in evidence["guardrails"] if g["status"] == RED]
    if red:
        raise ValidationError(f"A guardrail of stage {plan.stage_index + 1} ({stage.name}) is breached: "
                              + "; ".join(red))


@transaction.atomic
def plan_start(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Enter the first stage (or open its change request)."""
    plan = locked(plan)
    RULES[Action.START].require(actor, plan, system=True)
    _expect(plan, (Status.DRAFT,), "started")
    reason = _require_reason(reason)
    _require_on(plan, "turn it on first (it then serves its default, the baseline) and start the plan")
    stages = plan_stages(plan)
    evidence = plan_evidence(plan, stages=stages)
    plan.status = Status.RUNNING
    return _enter(plan, 0, action=Action.START, reason=reason, actor=actor, stages=stages, evidence=evidence)


@transaction.atomic
def plan_advance(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Enter the next stage: refused before the bake time, while a guardrail is breached, or
    while an earlier step still waits for approval."""
    plan, stages, reason = _begin_synced(plan, Action.ADVANCE, actor, reason, (Status.RUNNING,), "advanced")
    if plan.stage_index >= len(stages) - 1 and not plan.pending_change_request_id:
        raise ValidationError("This is the last stage: promote the candidate to complete the plan.")
    evidence = plan_evidence(plan, stages=stages)
    _ready_to_expand(plan, stages, evidence)
    return _enter(plan, plan.stage_index + 1, action=Action.ADVANCE, reason=reason, actor=actor, stages=stages,
                  evidence=evidence)


@transaction.atomic
def plan_promote(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """The candidate becomes the default for everyone and the plan completes, through the
    policy like any change. Skipping a later stage that needs approval opens a request."""
    plan, stages, reason = _begin_synced(plan, Action.PROMOTE, actor, reason, (Status.RUNNING,), "promoted")
    if plan.stage_index < 0:
        raise ValidationError("The plan has not entered its first stage yet.")
    evidence = plan_evidence(plan, stages=stages)
    _ready_to_expand(plan, stages, evidence)
    before = _before(plan)
    force = _promotion_forced(plan, stages)
    result = _submit(plan, promote_targeting(plan, _current_state(plan)), actor=actor, force_request=force,
                     reason=f"Rollout plan {plan.pk}, promote {plan.candidate}: {reason}")
    if isinstance(result, ChangeRequest):
        plan.pending_change_request = result
        plan.save(update_fields=["pending_change_request", "updated_at"])
        decide(plan, Action.PROMOTE, actor, reason, evidence=evidence, change_request=result)
        audit(plan, AuditAction.PLAN_ADVANCE_REQUESTED, actor, f"Promoting {plan.candidate} of {plan.flag.key} in "
              f"{plan.environment.name} waits for approval: CR-{result.pk}", reason, before, change_request=result)
        return plan
    plan.status = Status.COMPLETED
    return _conclude(plan, Action.PROMOTE, AuditAction.PLAN_PROMOTED, actor, reason, before,
                     f"{plan.flag.key} in {plan.environment.name}: {plan.candidate} is the default for everyone",
                     fields=("status",), evidence=evidence)


def pause_locked(plan: RolloutPlan, *, reason: str, actor: Actor, evidence: dict[str, Any]) -> RolloutPlan:
    before = _before(plan)
    _withdraw_pending(plan, actor, reason)
    plan.status = Status.PAUSED
    return _conclude(plan, Action.PAUSE, AuditAction.PLAN_PAUSED, actor, reason, before,
                     f"Paused {plan.flag.key} in {plan.environment.name} at stage {plan.stage_index + 1}",
                     fields=("status", "pending_change_request"), evidence=evidence)


@transaction.atomic
def plan_pause(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Stop expanding: traffic stays as it is; a stage waiting for approval is withdrawn."""
    plan, stages, reason = _begin_synced(plan, Action.PAUSE, actor, reason, (Status.RUNNING,), "paused")
    return pause_locked(plan, reason=reason, actor=actor, evidence=plan_evidence(plan, stages=stages))


@transaction.atomic
def plan_resume(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Running again. The stage's bake time and evidence window start over, so the data that
    caused the pause does not count for or against what happens next."""
    plan = locked(plan)
    RULES[Action.RESUME].require(actor, plan, system=True)
    _expect(plan, (Status.PAUSED,), "resumed")
    reason = _require_reason(reason)
    before = _before(plan)
    evidence = plan_evidence(plan)
    plan.status = Status.RUNNING
    if plan.stage_index >= 0:
        plan.stage_entered_at = timezone.now()
    return _conclude(plan, Action.RESUME, AuditAction.PLAN_RESUMED, actor, reason, before,
                     f"Resumed {plan.flag.key} in {plan.environment.name} at stage {plan.stage_index + 1}",
                     fields=("status", "stage_entered_at"), evidence=evidence)


def _de_escalation_submitter(plan: RolloutPlan, actor: Actor) -> Actor:
    """Who submits a move towards the baseline. Outside governed environments
    targeting_change_submit leaves edits to owners and editors; an operator's roll-back still
    never waits, so the plan submits it."""
    if (isinstance(actor, AbstractBaseUser) and not plan.environment.is_governed
            and not steers(actor, plan.flag)):
        return SystemActor(f"rollout-plan:{actor.get_username()}")
    return actor


def rollback_locked(plan: RolloutPlan, *, reason: str, actor: Actor, evidence: dict[str, Any]) -> RolloutPlan:
    before = _before(plan)
    _withdraw_pending(plan, actor, reason)
    result = _submit(plan, rollback_targeting(plan, _current_state(plan)), actor=_de_escalation_submitter(plan, actor),
                     reason=shortened(f"Rollout plan {plan.pk} rolled back to {plan.baseline}: {reason}", 2_000))
    if isinstance(result, ChangeRequest):  # only if the baseline is riskier than what it replaces
        raise ValidationError(f"Rolling back to {plan.baseline} raises risk here; use the kill switch.")
    plan.status = Status.ROLLED_BACK
    return _conclude(plan, Action.ROLLBACK, AuditAction.PLAN_ROLLED_BACK, actor, reason, before,
                     f"Rolled back {plan.flag.key} in {plan.environment.name}: everyone gets {plan.baseline}",
                     fields=("status", "pending_change_request"), evidence=evidence)


def step_back_locked(plan: RolloutPlan, *, reason: str, actor: Actor, evidence: dict[str, Any]) -> RolloutPlan:
    """Return a running plan at stage k > 0 to stage k − 1's targeting at once, through the
    de-escalation path, and pause it there: a person decides what comes next (resuming
    restarts the stage's bake time and evidence window). The caller holds the plan's lock and
    its transaction. Refuses (ValidationError, before anything is written) a plan in its first
    stage (roll it back instead), a flag that is off (stage targeting would turn it on), and a
    move the environment's policy would hold for approval: the caller then pauses instead."""
    _expect(plan, (Status.RUNNING,), "stepped back")
    if plan.stage_index <= 0:
        raise ValidationError("The plan is in its first stage: there is no earlier stage to return to; roll it back.")
    _require_on(plan, "stepping back would turn it on")
    stages = plan_stages(plan)
    target = plan.stage_index - 1
    stage = stages[target]
    changes = stage_targeting(plan, target, _current_state(plan), stages)
    targeting = Targeting.objects.get(flag_id=plan.flag_id, environment_id=plan.environment_id)
    if not preview_targeting_change(targeting=targeting, changes=changes).applies_now:
        raise ValidationError(f"Returning to stage {target + 1} ({stage.name}) would need approval here.")
    before = _before(plan)
    _withdraw_pending(plan, actor, reason)
    result = _submit(plan, changes, actor=_de_escalation_submitter(plan, actor),
                     reason=shortened(f"Rollout plan {plan.pk} stepped back to stage {target + 1} ({stage.name}): "
                                      f"{reason}", 2_000))
    if isinstance(result, ChangeRequest):  # the preview said otherwise; never leave it waiting
        raise ValidationError(f"Returning to stage {target + 1} ({stage.name}) would need approval here.")
    from_stage = plan.stage_index
    # The evidence window starts at the minute of stage_entered_at (aggregates are per minute):
    # from the next minute on, so the breaching minute's events never count for the stage it
    # stepped back to (resuming starts the window again anyway).
    entered = timezone.now().replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    plan.status, plan.stage_index, plan.stage_entered_at = Status.PAUSED, target, entered
    return _conclude(plan, Action.STEP_BACK, AuditAction.PLAN_STEPPED_BACK, actor, reason, before,
                     f"Stepped back {plan.flag.key} in {plan.environment.name} from stage {from_stage + 1} "
                     f"({stages[from_stage].name}) to stage {target + 1} ({stage.name}) and paused there",
                     fields=("status", "stage_index", "stage_entered_at", "pending_change_request"),
                     evidence=evidence, from_stage=from_stage, to_stage=target)


@transaction.atomic
def plan_rollback(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Everyone to the baseline at once: the de-escalation path, which never waits for an
    approval (the policy applies moves towards the baseline at once) and withdraws a stage
    waiting for one."""
    plan, stages, reason = _begin_synced(plan, Action.ROLLBACK, actor, reason, (Status.RUNNING, Status.PAUSED), "rolled back")
    return rollback_locked(plan, reason=reason, actor=actor, evidence=plan_evidence(plan, stages=stages))


def _set_attention(plan: RolloutPlan, *, attention: bool, reason: str, actor: Actor) -> RolloutPlan:
    """Mark a locked, open plan for investigation or close that; traffic does not change."""
    action = Action.INVESTIGATE if attention else Action.RESOLVE
    before = _before(plan)
    plan.needs_attention = attention
    plan.save(update_fields=["needs_attention", "updated_at"])
    decide(plan, action, actor, reason, evidence=plan_evidence(plan))
    where = f"{plan.flag.key} in {plan.environment.name}"
    audit(plan, AuditAction.PLAN_INVESTIGATED if attention else AuditAction.PLAN_ATTENTION_CLEARED, actor,
          f"{where} needs attention" if attention else f"{where}: investigation closed", reason, before)
    return plan


@transaction.atomic
def plan_investigate(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Mark the plan for attention; traffic does not change."""
    plan = locked(plan)
    RULES[Action.INVESTIGATE].require(actor, plan, system=True)
    _expect(plan, RolloutPlan.OPEN, "marked for investigation")
    return _set_attention(plan, attention=True, reason=_require_reason(reason), actor=actor)


@transaction.atomic
def plan_resolve(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Close an investigation: the plan no longer needs attention; traffic does not change."""
    plan = locked(plan)
    RULES[Action.RESOLVE].require(actor, plan, system=True)
    _expect(plan, RolloutPlan.OPEN, "cleared (it is closed; its log keeps the investigation)")
    if not plan.needs_attention:
        raise ValidationError("This plan is not marked for investigation.")
    return _set_attention(plan, attention=False, reason=_require_reason(reason), actor=actor)


@transaction.atomic
def plan_discard(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Drop a draft that never started. It stays in the log as discarded, and the flag may
    get a new plan in that environment."""
    plan = locked(plan)
    RULES[Action.DISCARD].require(actor, plan, system=True)
    _expect(plan, (Status.DRAFT,), "discarded (only a draft can be; roll back a started plan)")
    reason = _require_reason(reason)
    before = _before(plan)
    plan.status = Status.DISCARDED
    return _conclude(plan, Action.DISCARD, AuditAction.PLAN_DISCARDED, actor, reason, before,
                     f"Discarded the draft plan for {plan.flag.key} in {plan.environment.name}", fields=("status",))


@transaction.atomic
def plan_sync(plan: RolloutPlan) -> RolloutPlan:
    """Move a plan whose pending change request was applied (or forget one closed without
    applying). Idempotent: the status check runs under the plan's lock."""
    plan = locked(plan)
    sync_locked(plan, plan_stages(plan))
    return plan


def pause_stopped_plans(*, flag_ids: list[int], environment_id: int, actor: Actor, reason: str) -> int:
    """A kill switch or incident mode sent flags to their fallbacks: their running plans pause
    in the same transaction, withdrawing a stage waiting for approval, so nothing expands
    until a person resumes. A plan that cannot be paused (it is logged) never blocks the
    stop: it cannot expand anyway while the flag is off. Returns how many paused."""
    paused = 0
    for plan in RolloutPlan.objects.filter(flag_id__in=flag_ids, environment_id=environment_id,
                                           status=Status.RUNNING).only("pk"):
        try:
            with transaction.atomic():
                plan = locked(plan)
                stages = plan_stages(plan)
                sync_locked(plan, stages)
                if plan.status == Status.RUNNING:
                    pause_locked(plan, reason=reason, actor=actor, evidence=plan_evidence(plan, stages=stages))
                    paused += 1
        except Exception:  # the stop itself must go through
            logger.exception("Could not pause rollout plan %s after its flag was stopped", plan.pk)
    return paused


def sync_plans_waiting_on(change_request_id: int) -> int:
    """Called after a change request is applied or closed: the plans waiting on it follow at
    once instead of at the next guardrail sweep. Returns how many plans changed."""
    moved = 0
    for plan in RolloutPlan.objects.filter(pending_change_request_id=change_request_id).only("pk"):
        before = plan.pending_change_request_id
        moved += plan_sync(plan).pending_change_request_id != before
    return moved
