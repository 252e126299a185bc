"""Rollout plans: a candidate variation exposed stage by stage, with guardrails that stop
expansion. Every action locks the plan row, re-checks its status, changes traffic only
through `rollouts.services.targeting_change_submit` (so a governed environment's policy
decides apply-now vs change request, like for any change), and writes its release decision
(with the evidence at that moment) and its audit row in the same transaction.

State machine:  draft ─start→ running ─pause→ paused ─resume→ running
                running|paused ─rollback→ rolled_back;  running ─promote→ completed
A stage entry or promotion that needs approval leaves the plan where it is, with a
`pending_change_request`; `plan_sync` moves it once that request is applied.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import Actor, SystemActor, record
from audit.validators import check_text_limit
from flags.models import Environment, Flag, Segment, Targeting
from flags.permissions import has_project_permission, holders_of
from flags.snapshots import targeting_state
from notifications.services import notify
from rollouts import services
from rollouts.models import ChangeRequest, ReleaseDecision, RolloutPlan, RolloutStage
from rollouts.plan_guardrails import RED, evaluate_guardrails, guardrail_problems, overall
from telemetry.models import Metric
from telemetry.selectors import Window
from telemetry.selectors import evidence_many as telemetry_evidence_many

logger = logging.getLogger(__name__)

Status = RolloutPlan.Status
Action = ReleaseDecision.Action
GUARDRAILS = SystemActor("guardrails")
PLAN_SYNC = SystemActor("rollout-plans")
SPLIT_TOTAL = 100_000
MAX_STAGES = 20
CLOSED_REQUEST = (ChangeRequest.Status.REJECTED, ChangeRequest.Status.CANCELLED, ChangeRequest.Status.EXPIRED,
                  ChangeRequest.Status.CONFLICTED)

# The seed article's rollout path: (name, segments, percentage in thousandths, bake minutes, needs approval)
TEMPLATE_STAGES: tuple[tuple[str, list[str], int, int, bool], ...] = (
    ("Internal users", ["internal_users"], 0, 60, False),
    ("Beta accounts", ["internal_users", "beta_accounts"], 0, 24 * 60, False),
    ("5 % of eligible traffic", ["internal_users", "beta_accounts"], 5_000, 24 * 60, False),
    ("50 % experiment", ["internal_users", "beta_accounts"], 50_000, 3 * 24 * 60, False),
    ("Default behaviour", ["internal_users", "beta_accounts"], SPLIT_TOTAL, 0, True),
)
TEMPLATE_MIN_SAMPLES = 50


# --- reads ----------------------------------------------------------------------------------


def plan_stages(plan: RolloutPlan) -> list[RolloutStage]:
    return list(RolloutStage.objects.filter(plan=plan).order_by("order"))


def plan_rule_id(plan: RolloutPlan) -> str:
    return f"plan-{plan.pk}"


def stage_targeting(plan: RolloutPlan, index: int, current: dict[str, Any],
                    stages: list[RolloutStage] | None = None) -> dict[str, Any]:
    """The targeting stage `index` means: the flag's own rules kept, the plan's rule first
    (the candidate for the union of the segments of stages ≤ index) and a default split with
    the candidate listed last, so widening it only adds buckets to the candidate."""
    stages = stages if stages is not None else plan_stages(plan)
    segments = sorted({key for stage in stages[:index + 1] for key in stage.segments})
    rules = [rule for rule in current.get("rules", []) if rule.get("id") != plan_rule_id(plan)]
    if segments:
        rules.insert(0, {"id": plan_rule_id(plan), "description": f"Rollout plan {plan.pk}: {stages[index].name}",
                         "clauses": [{"op": "in_segment", "values": segments}],
                         "serve": {"variation": plan.candidate}})
    percentage = stages[index].percentage
    if percentage >= SPLIT_TOTAL:
        default: dict[str, Any] = {"variation": plan.candidate}
    elif percentage <= 0:
        default = {"variation": plan.baseline}
    else:
        default = {"split": [{"variation": plan.baseline, "weight": SPLIT_TOTAL - percentage},
                             {"variation": plan.candidate, "weight": percentage}]}
    return {"enabled": True, "rules": rules, "default_serve": default, "assignment_unit": plan.assignment_unit}


def _to_baseline(serve: dict[str, Any], plan: RolloutPlan) -> dict[str, Any]:
    if serve.get("variation") == plan.candidate:
        return {"variation": plan.baseline}
    if "split" in serve and any(b["variation"] == plan.candidate for b in serve["split"]):
        return {"variation": plan.baseline}
    return serve


def rollback_targeting(plan: RolloutPlan, current: dict[str, Any]) -> dict[str, Any]:
    """Everyone to the baseline: the plan's rule goes, and every rule, individual target or
    default that could serve the candidate serves the baseline instead."""
    rules = [{**rule, "serve": _to_baseline(rule["serve"], plan)}
             for rule in current.get("rules", []) if rule.get("id") != plan_rule_id(plan)]
    targets: dict[str, list[str]] = {}
    for target in current.get("targets", []):
        variation = plan.baseline if target["variation"] == plan.candidate else target["variation"]
        targets.setdefault(variation, []).extend(v for v in target["values"] if v not in targets.get(variation, []))
    return {"rules": rules, "targets": [{"variation": v, "values": values} for v, values in targets.items()],
            "default_serve": _to_baseline(current.get("default_serve") or {}, plan)}


def promote_targeting(plan: RolloutPlan, current: dict[str, Any]) -> dict[str, Any]:
    """The candidate becomes the default for everyone; the plan's rule is no longer needed."""
    rules = [rule for rule in current.get("rules", []) if rule.get("id") != plan_rule_id(plan)]
    return {"enabled": True, "rules": rules, "default_serve": {"variation": plan.candidate},
            "assignment_unit": plan.assignment_unit}


def _metric_kinds(project_ids: set[int], keys: set[str]) -> dict[tuple[int, str], str]:
    return {(project_id, key): kind for project_id, key, kind in Metric.objects.filter(
        project_id__in=project_ids, key__in=keys).values_list("project_id", "key", "kind")}


def _window(plan: RolloutPlan, stages: list[RolloutStage], now: datetime.datetime) -> tuple[Window, list[dict]]:
    """The current stage's evidence window (since it was entered, or since the plan was made)
    and its guardrails. Aggregates are per minute: a window starting mid-minute would drop the
    stage's first minute, so its start is floored."""
    stage = stages[plan.stage_index] if 0 <= plan.stage_index < len(stages) else None
    start = (plan.stage_entered_at or plan.created_at or now).replace(second=0, microsecond=0)
    guardrails = stage.guardrails if stage else []
    keys = {g["metric"] for g in guardrails} | ({plan.flag.primary_metric} if plan.flag.primary_metric else set())
    return Window(plan.flag_id, plan.environment_id, start, now, tuple(sorted(keys))), guardrails


def _judged(plan: RolloutPlan, window: Window, guardrails: list[dict], variants: dict[str, Any],
            kinds: dict[tuple[int, str], str]) -> dict[str, Any]:
    results = evaluate_guardrails(guardrails, evidence=variants, baseline=plan.baseline, candidate=plan.candidate,
                                  metric_kinds={key: kind for (project_id, key), kind in kinds.items()
                                                if project_id == plan.project_id})
    return {"stage": plan.stage_index, "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
            "variants": variants, "guardrails": [r.as_dict() for r in results], "status": overall(results)}


def plan_evidence(plan: RolloutPlan, *, stages: list[RolloutStage] | None = None,
                  now: datetime.datetime | None = None) -> dict[str, Any]:
    """The evidence of the current stage and each of its guardrails judged green, amber or
    red. JSON-able: it is stored as is."""
    stages = stages if stages is not None else plan_stages(plan)
    window, guardrails = _window(plan, stages, now or timezone.now())
    kinds = _metric_kinds({plan.project_id}, set(window.metric_keys))
    return _judged(plan, window, guardrails, telemetry_evidence_many([window])[0], kinds)


def plans_evidence(plan_list: list[RolloutPlan], *, stages_by_plan: dict[int, list[RolloutStage]],
                   now: datetime.datetime | None = None) -> dict[int, dict[str, Any]]:
    """`plan_evidence` of several plans (the board) in the same five queries as one."""
    if not plan_list:
        return {}
    now = now or timezone.now()
    windows = [_window(plan, stages_by_plan.get(plan.pk, []), now) for plan in plan_list]
    answers = telemetry_evidence_many([window for window, _ in windows])
    kinds = _metric_kinds({plan.project_id for plan in plan_list},
                          {key for window, _ in windows for key in window.metric_keys})
    return {plan.pk: _judged(plan, window, guardrails, variants, kinds)
            for plan, (window, guardrails), variants in zip(plan_list, windows, answers, strict=True)}


# --- creation -------------------------------------------------------------------------------


def _require_reason(reason: str) -> str:
    if not reason or not reason.strip():
        raise ValidationError({"reason": "Say why: the reason stays with the decision in the plan's log."})
    # Shorter than other reasons: a stage's change request carries it after the plan's context.
    check_text_limit("reason", reason.strip(), limit="plan_reason")
    return reason.strip()


def _user(actor: Actor) -> AbstractBaseUser | None:
    return actor if isinstance(actor, AbstractBaseUser) else None


def _label(actor: Actor) -> str:
    return actor.get_username() if isinstance(actor, AbstractBaseUser) else str(actor)


def _stage_problems(stages: list[dict[str, Any]], segment_keys: set[str], metric_keys: set[str]) -> dict[str, str]:
    errors: dict[str, str] = {}
    previous_segments: set[str] = set()
    previous_percentage = 0
    for i, stage in enumerate(stages):
        path = f"stages[{i}]"
        name = stage.get("name")
        if not isinstance(name, str) or not name.strip():
            errors[f"{path}.name"] = "Name the stage."
        segments = stage.get("segments", [])
        if not isinstance(segments, list) or not all(isinstance(s, str) for s in segments):
            errors[f"{path}.segments"] = "A list of segment keys."
            segments = []
        unknown = sorted(set(segments) - segment_keys)
        if unknown:
            errors[f"{path}.segments"] = f"Unknown segment(s) in this project: {', '.join(unknown)}."
        if not previous_segments <= set(segments):
            errors[f"{path}.segments"] = ("Exposure only grows: keep the segments of earlier stages "
                                          f"({', '.join(sorted(previous_segments - set(segments)))} missing).")
        percentage = stage.get("percentage", 0)
        if isinstance(percentage, bool) or not isinstance(percentage, int) or not 0 <= percentage <= SPLIT_TOTAL:
            errors[f"{path}.percentage"] = "Thousandths of a percent, a whole number from 0 to 100000."
        else:
            if percentage < previous_percentage:
                errors[f"{path}.percentage"] = (f"Exposure only grows: {percentage / 1000:g} % is less than the "
                                                f"previous stage's {previous_percentage / 1000:g} %.")
            previous_percentage = max(previous_percentage, percentage)
        bake = stage.get("min_bake_minutes", 0)
        if isinstance(bake, bool) or not isinstance(bake, int) or bake < 0:
            errors[f"{path}.min_bake_minutes"] = "Minutes, a whole number ≥ 0."
        guardrails = stage.get("guardrails", [])
        if not isinstance(guardrails, list):
            errors[f"{path}.guardrails"] = "A list of guardrails."
            guardrails = []
        for j, guardrail in enumerate(guardrails):
            problems = guardrail_problems(guardrail)
            if not problems and guardrail["metric"] not in metric_keys:
                problems = [f"metric: {guardrail['metric']} is not in the project's metrics registry"]
            if problems:
                errors[f"{path}.guardrails[{j}]"] = "; ".join(problems)
        previous_segments |= set(segments)
    return errors


@transaction.atomic
def plan_create(*, flag: Flag, environment: Environment, baseline: str, candidate: str, stages: list[dict[str, Any]],
                actor: AbstractBaseUser, assignment_unit: str = "", on_breach: str = RolloutPlan.OnBreach.PAUSE,
                reason: str = "") -> RolloutPlan:
    """A draft plan, validated as a whole: baseline ≠ candidate, both variations of the flag,
    segments of the project, exposure that only grows from stage to stage. The candidate's
    risk rank is not judged here: the approval policy judges each stage's change."""
    check_text_limit("reason", reason, limit="plan_reason")
    if not services.may_propose(actor, flag):
        raise ValidationError("Planning a rollout needs the flag owner or editor role.")
    if environment.project_id != flag.project_id:
        raise ValidationError({"environment": "The environment belongs to another project."})
    if flag.archived_at is not None:
        raise ValidationError(f"{flag.key} is archived: restore it before planning a rollout.")
    targeting = Targeting.objects.get(flag=flag, environment=environment)
    errors: dict[str, str] = {}
    variations = set(flag.variations.values_list("key", flat=True))
    for name, key in (("baseline", baseline), ("candidate", candidate)):
        if key not in variations:
            errors[name] = f"{key!r} is not a variation of {flag.key}."
    if baseline == candidate:
        errors["candidate"] = "The candidate must differ from the baseline."
    if on_breach not in RolloutPlan.OnBreach.values:
        errors["on_breach"] = "Pause or roll back."
    if not isinstance(stages, list) or not 1 <= len(stages) <= MAX_STAGES:
        errors["stages"] = f"From 1 to {MAX_STAGES} stages."
        stages = []
    segment_keys = set(Segment.objects.filter(project_id=flag.project_id).values_list("key", flat=True))
    metric_keys = set(Metric.objects.filter(project_id=flag.project_id).values_list("key", flat=True))
    errors.update(_stage_problems(stages, segment_keys, metric_keys))
    if RolloutPlan.objects.filter(flag=flag, environment=environment, status__in=RolloutPlan.OPEN).exists():
        errors["flag"] = f"{flag.key} already has an open rollout plan in {environment.name}."
    if errors:
        raise ValidationError(errors)
    plan = RolloutPlan(project_id=flag.project_id, flag=flag, environment=environment, baseline=baseline,
                       candidate=candidate, assignment_unit=assignment_unit or targeting.assignment_unit,
                       on_breach=on_breach, created_by=actor)
    plan.full_clean(validate_constraints=False)
    try:
        with transaction.atomic():
            plan.save()
    except IntegrityError as exc:  # a plan opened concurrently
        raise ValidationError({"flag": f"{flag.key} already has an open rollout plan in {environment.name}."}) from exc
    for order, stage in enumerate(stages):
        row = RolloutStage(plan=plan, order=order, name=stage["name"].strip(), segments=list(stage.get("segments", [])),
                           percentage=stage.get("percentage", 0), min_bake_minutes=stage.get("min_bake_minutes", 0),
                           needs_approval=bool(stage.get("needs_approval", False)),
                           guardrails=list(stage.get("guardrails", [])))
        row.full_clean(exclude=["plan"])
        row.save()
    record(actor=actor, action=AuditAction.PLAN_CREATED, target=plan, project=flag.project, environment=environment,
           flag=flag, after={"baseline": baseline, "candidate": candidate, "on_breach": on_breach,
                             "stages": [{**s, "name": s["name"].strip()} for s in stages]},
           reason=reason, summary=f"Planned {flag.key} in {environment.name}: {baseline} → {candidate} in "
                                  f"{len(stages)} stages")
    return plan


def template_stages(flag: Flag) -> list[dict[str, Any]]:
    """The seed article's path with guardrails from the flag's guardrail metrics that the
    project registers: lower-is-better at most 1.2 × the baseline, higher-is-better at least
    0.9 × the baseline, each judged from 50 samples."""
    registered = dict(Metric.objects.filter(project_id=flag.project_id, key__in=flag.guardrail_metrics)
                      .values_list("key", "higher_is_better"))
    guardrails = [{"metric": key, "kind": "relative_min" if registered[key] else "relative_max",
                   "threshold": 0.9 if registered[key] else 1.2, "min_samples": TEMPLATE_MIN_SAMPLES}
                  for key in flag.guardrail_metrics if key in registered]
    return [{"name": name, "segments": list(segments), "percentage": percentage, "min_bake_minutes": bake,
             "needs_approval": approval, "guardrails": [dict(g) for g in guardrails]}
            for name, segments, percentage, bake, approval in TEMPLATE_STAGES]


def plan_from_template(*, flag: Flag, environment: Environment, candidate: str, actor: AbstractBaseUser,
                       baseline: str | None = None, on_breach: str = RolloutPlan.OnBreach.PAUSE,
                       reason: str = "") -> RolloutPlan:
    """internal users → beta accounts → 5 % of eligible traffic → 50 % experiment → default
    behaviour (needs approval). The baseline defaults to the flag's fallback."""
    return plan_create(flag=flag, environment=environment, baseline=baseline or flag.fallback_variation.key,
                       candidate=candidate, stages=template_stages(flag), actor=actor, on_breach=on_breach,
                       reason=reason)


# --- actions --------------------------------------------------------------------------------


def _locked(plan: RolloutPlan) -> RolloutPlan:
    return (RolloutPlan.objects.select_for_update(of=("self",))
            .select_related("flag__owner_user", "flag__fallback_variation", "project", "environment",
                            "pending_change_request")
            .get(pk=plan.pk))


PERMISSION_REFUSALS = {
    "propose": "needs the flag owner or editor role",
    "stop": "needs the operator, flag owner or editor role",
    "participate": "needs a role that takes part in changes",
}


def _permission_kind(action: str) -> str:
    if action in (Action.START, Action.ADVANCE, Action.PROMOTE, Action.RESUME, Action.DISCARD):
        return "propose"
    if action in (Action.PAUSE, Action.ROLLBACK):
        return "stop"
    return "participate"  # investigate, resolve


def may_act(user: Any, plan: RolloutPlan, action: str) -> bool:
    """Whether `user`'s roles allow `action` on the plan (its state is judged separately):
    owners and editors steer it, operators may also stop it, anyone taking part in changes
    may mark it for investigation or close that investigation."""
    kind = _permission_kind(action)
    if kind == "propose":
        return services.may_propose(user, plan.flag)
    if kind == "stop":
        return services.may_propose(user, plan.flag) or has_project_permission(user, plan.project, "flip_killswitch")
    return bool(services.participation(user, plan.project))


def _check_permission(plan: RolloutPlan, actor: Actor, action: str) -> None:
    if not isinstance(actor, AbstractBaseUser):
        return  # system jobs act through the same services
    if not may_act(actor, plan, action):
        verb = {Action.ROLLBACK: "roll back", Action.RESOLVE: "close the investigation of"}.get(action, action)
        raise ValidationError(f"To {verb} a rollout plan {PERMISSION_REFUSALS[_permission_kind(action)]}.")


def _expect(plan: RolloutPlan, allowed: tuple[str, ...], verb: str) -> None:
    if plan.status not in allowed:
        raise ValidationError(f"A {plan.get_status_display().lower()} plan cannot be {verb}.")


def _decide(plan: RolloutPlan, action: str, actor: Actor, reason: str, *, to_stage: int | None = None,
            evidence: dict[str, Any] | None = None, change_request: ChangeRequest | None = None,
            from_stage: int | None = None) -> ReleaseDecision:
    decision = ReleaseDecision(
        plan=plan, action=action, actor=_user(actor), actor_label=_label(actor), reason=reason,
        from_stage=plan.stage_index if from_stage is None else from_stage,
        to_stage=plan.stage_index if to_stage is None else to_stage, evidence=evidence or {},
        change_request=change_request)
    decision.full_clean(exclude=["plan", "actor", "change_request"])
    decision.save()
    return decision


def _audit(plan: RolloutPlan, action: AuditAction, actor: Actor, summary: str, reason: str = "",
           before: Any = None, change_request: ChangeRequest | None = None) -> None:
    record(actor=actor, action=action, target=plan, project=plan.project, environment=plan.environment,
           flag=plan.flag, before=before,
           after={"status": plan.status, "stage_index": plan.stage_index, "needs_attention": plan.needs_attention,
                  "pending_change_request": plan.pending_change_request_id},
           summary=summary, reason=reason, change_request_id=change_request.pk if change_request else None)


def _before(plan: RolloutPlan) -> dict[str, Any]:
    return {"status": plan.status, "stage_index": plan.stage_index, "needs_attention": plan.needs_attention,
            "pending_change_request": plan.pending_change_request_id}


def _submit(plan: RolloutPlan, changes: dict[str, Any], *, reason: str, actor: Actor,
            force_request: bool = False) -> Targeting | ChangeRequest:
    targeting = Targeting.objects.get(flag_id=plan.flag_id, environment_id=plan.environment_id)
    return services.targeting_change_submit(targeting=targeting, changes=changes, reason=reason, actor=actor,
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
        return not services.preview_targeting_change(targeting=targeting, changes=changes).applies_now
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
        _decide(plan, action, actor, reason, to_stage=target, evidence=evidence, change_request=result)
        _audit(plan, AuditAction.PLAN_STARTED if action == Action.START else AuditAction.PLAN_ADVANCE_REQUESTED,
               actor, f"Stage {target + 1} ({stage.name}) of {plan.flag.key} in {plan.environment.name} waits for "
                      f"approval: CR-{result.pk}", reason, before, change_request=result)
        return plan
    from_stage = plan.stage_index
    plan.stage_index, plan.stage_entered_at = target, timezone.now()
    plan.save(update_fields=["status", "stage_index", "stage_entered_at", "updated_at"])
    _decide(plan, action, actor, reason, from_stage=from_stage, to_stage=target, evidence=evidence)
    _audit(plan, audit_action, actor, f"{plan.flag.key} in {plan.environment.name} entered stage {target + 1} "
                                      f"({stage.name})", reason, before)
    return plan


def _sync_locked(plan: RolloutPlan, stages: list[RolloutStage]) -> bool:
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
            _decide(plan, Action.PROMOTE, PLAN_SYNC, reason, evidence=evidence, change_request=change_request)
            _audit(plan, AuditAction.PLAN_PROMOTED, PLAN_SYNC, f"{plan.flag.key} in {plan.environment.name}: "
                   f"{plan.candidate} is the default for everyone ({reason})", before=before,
                   change_request=change_request)
            return True
        target = requested.to_stage if requested is not None else plan.stage_index + 1
        from_stage = plan.stage_index
        plan.stage_index, plan.stage_entered_at = target, change_request.applied_at or timezone.now()
        plan.save(update_fields=["stage_index", "stage_entered_at", "pending_change_request", "updated_at"])
        _decide(plan, Action.ADVANCE, PLAN_SYNC, reason, from_stage=from_stage, to_stage=target, evidence=evidence,
                change_request=change_request)
        _audit(plan, AuditAction.PLAN_ADVANCED, PLAN_SYNC, f"{plan.flag.key} in {plan.environment.name} entered "
               f"stage {target + 1} ({stages[target].name}) ({reason})", before=before, change_request=change_request)
        return True
    if change_request.status in CLOSED_REQUEST:
        plan.pending_change_request = None
        plan.save(update_fields=["pending_change_request", "updated_at"])
        _audit(plan, AuditAction.PLAN_REQUEST_CLOSED, PLAN_SYNC,
               f"CR-{change_request.pk} was {change_request.get_status_display().lower()}: the plan stays at stage "
               f"{plan.stage_index + 1}", before=before, change_request=change_request)
        return True
    return False


def _cancel_pending(plan: RolloutPlan, actor: Actor, reason: str) -> None:
    """Stopping or reversing a plan withdraws the stage it was waiting to enter."""
    if plan.pending_change_request_id is None:
        return
    change_request = ChangeRequest.objects.select_for_update(of=("self",)).select_related(
        "project", "environment", "flag").get(pk=plan.pending_change_request_id)
    plan.pending_change_request = None
    if change_request.status not in (*ChangeRequest.OPEN, ChangeRequest.Status.CONFLICTED):
        return
    change_request.status = ChangeRequest.Status.CANCELLED
    change_request.save(update_fields=["status", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_CANCELLED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"status": ChangeRequest.Status.CANCELLED}, reason=reason, change_request_id=change_request.pk,
           summary=f"Withdrawn: rollout plan {plan.pk} was stopped")


def _require_on(plan: RolloutPlan, then: str) -> None:
    """A plan moves traffic between variations of a flag that is on; it never turns a flag on
    (a flag may be off because an operator stopped it)."""
    if not Targeting.objects.filter(flag_id=plan.flag_id, environment_id=plan.environment_id, enabled=True).exists():
        raise ValidationError(f"{plan.flag.key} is off in {plan.environment.name}: {then}; a rollout plan never "
                              "turns a flag on.")


def _ready_to_expand(plan: RolloutPlan, stages: list[RolloutStage], evidence: dict[str, Any]) -> None:
    """Refuse expansion before the current stage's bake time, or while a guardrail is red."""
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
    red = [g["message"] for g in evidence["guardrails"] if g["status"] == RED]
    if red:
        raise ValidationError(f"A guardrail of stage {plan.stage_index + 1} ({stage.name}) is breached: "
                              + "; ".join(red))


@transaction.atomic
def plan_start(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Enter the first stage (or open its change request)."""
    plan = _locked(plan)
    _check_permission(plan, actor, Action.START)
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
    plan = _locked(plan)
    _check_permission(plan, actor, Action.ADVANCE)
    stages = plan_stages(plan)
    _sync_locked(plan, stages)
    _expect(plan, (Status.RUNNING,), "advanced")
    reason = _require_reason(reason)
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
    plan = _locked(plan)
    _check_permission(plan, actor, Action.PROMOTE)
    stages = plan_stages(plan)
    _sync_locked(plan, stages)
    _expect(plan, (Status.RUNNING,), "promoted")
    reason = _require_reason(reason)
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
        _decide(plan, Action.PROMOTE, actor, reason, evidence=evidence, change_request=result)
        _audit(plan, AuditAction.PLAN_ADVANCE_REQUESTED, actor, f"Promoting {plan.candidate} of {plan.flag.key} in "
               f"{plan.environment.name} waits for approval: CR-{result.pk}", reason, before, change_request=result)
        return plan
    plan.status = Status.COMPLETED
    plan.save(update_fields=["status", "updated_at"])
    _decide(plan, Action.PROMOTE, actor, reason, evidence=evidence)
    _audit(plan, AuditAction.PLAN_PROMOTED, actor, f"{plan.flag.key} in {plan.environment.name}: {plan.candidate} "
           "is the default for everyone", reason, before)
    return plan


def _pause_locked(plan: RolloutPlan, *, reason: str, actor: Actor, evidence: dict[str, Any]) -> RolloutPlan:
    before = _before(plan)
    _cancel_pending(plan, actor, reason)
    plan.status = Status.PAUSED
    plan.save(update_fields=["status", "pending_change_request", "updated_at"])
    _decide(plan, Action.PAUSE, actor, reason, evidence=evidence)
    _audit(plan, AuditAction.PLAN_PAUSED, actor, f"Paused {plan.flag.key} in {plan.environment.name} at stage "
                                                 f"{plan.stage_index + 1}", reason, before)
    return plan


@transaction.atomic
def plan_pause(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Stop expanding: traffic stays as it is; a stage waiting for approval is withdrawn."""
    plan = _locked(plan)
    _check_permission(plan, actor, Action.PAUSE)
    stages = plan_stages(plan)
    _sync_locked(plan, stages)
    _expect(plan, (Status.RUNNING,), "paused")
    reason = _require_reason(reason)
    return _pause_locked(plan, reason=reason, actor=actor, evidence=plan_evidence(plan, stages=stages))


@transaction.atomic
def plan_resume(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Running again. The stage's bake time and evidence window start over, so the data that
    caused the pause does not count for or against what happens next."""
    plan = _locked(plan)
    _check_permission(plan, actor, Action.RESUME)
    _expect(plan, (Status.PAUSED,), "resumed")
    reason = _require_reason(reason)
    before = _before(plan)
    evidence = plan_evidence(plan)
    plan.status = Status.RUNNING
    if plan.stage_index >= 0:
        plan.stage_entered_at = timezone.now()
    plan.save(update_fields=["status", "stage_entered_at", "updated_at"])
    _decide(plan, Action.RESUME, actor, reason, evidence=evidence)
    _audit(plan, AuditAction.PLAN_RESUMED, actor, f"Resumed {plan.flag.key} in {plan.environment.name} at stage "
                                                  f"{plan.stage_index + 1}", reason, before)
    return plan


def _rollback_locked(plan: RolloutPlan, *, reason: str, actor: Actor, evidence: dict[str, Any]) -> RolloutPlan:
    before = _before(plan)
    _cancel_pending(plan, actor, reason)
    submitter = actor
    if (isinstance(actor, AbstractBaseUser) and not plan.environment.is_governed
            and not services.may_propose(actor, plan.flag)):
        # Outside governed environments targeting_change_submit leaves edits to owners and
        # editors; an operator's roll-back still never waits, so the plan submits it.
        submitter = SystemActor(f"rollout-plan:{actor.get_username()}")
    result = _submit(plan, rollback_targeting(plan, _current_state(plan)), actor=submitter,
                     reason=f"Rollout plan {plan.pk} rolled back to {plan.baseline}: {reason}")
    if isinstance(result, ChangeRequest):  # only if the baseline is riskier than what it replaces
        raise ValidationError(f"Rolling back to {plan.baseline} raises risk here; use the kill switch.")
    plan.status = Status.ROLLED_BACK
    plan.save(update_fields=["status", "pending_change_request", "updated_at"])
    _decide(plan, Action.ROLLBACK, actor, reason, evidence=evidence)
    _audit(plan, AuditAction.PLAN_ROLLED_BACK, actor, f"Rolled back {plan.flag.key} in {plan.environment.name}: "
                                                      f"everyone gets {plan.baseline}", reason, before)
    return plan


@transaction.atomic
def plan_rollback(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Everyone to the baseline at once: the de-escalation path, which never waits for an
    approval (the policy applies moves towards the baseline at once) and withdraws a stage
    waiting for one."""
    plan = _locked(plan)
    _check_permission(plan, actor, Action.ROLLBACK)
    stages = plan_stages(plan)
    _sync_locked(plan, stages)
    _expect(plan, (Status.RUNNING, Status.PAUSED), "rolled back")
    reason = _require_reason(reason)
    return _rollback_locked(plan, reason=reason, actor=actor, evidence=plan_evidence(plan, stages=stages))


def _set_attention(plan: RolloutPlan, *, attention: bool, reason: str, actor: Actor) -> RolloutPlan:
    """Mark a locked, open plan for investigation or close that; traffic does not change."""
    action = Action.INVESTIGATE if attention else Action.RESOLVE
    before = _before(plan)
    plan.needs_attention = attention
    plan.save(update_fields=["needs_attention", "updated_at"])
    _decide(plan, action, actor, reason, evidence=plan_evidence(plan))
    where = f"{plan.flag.key} in {plan.environment.name}"
    _audit(plan, AuditAction.PLAN_INVESTIGATED if attention else AuditAction.PLAN_ATTENTION_CLEARED, actor,
           f"{where} needs attention" if attention else f"{where}: investigation closed", reason, before)
    return plan


@transaction.atomic
def plan_investigate(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Mark the plan for attention; traffic does not change."""
    plan = _locked(plan)
    _check_permission(plan, actor, Action.INVESTIGATE)
    _expect(plan, RolloutPlan.OPEN, "marked for investigation")
    return _set_attention(plan, attention=True, reason=_require_reason(reason), actor=actor)


@transaction.atomic
def plan_resolve(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Close an investigation: the plan no longer needs attention; traffic does not change."""
    plan = _locked(plan)
    _check_permission(plan, actor, Action.RESOLVE)
    _expect(plan, RolloutPlan.OPEN, "cleared (it is closed; its log keeps the investigation)")
    if not plan.needs_attention:
        raise ValidationError("This plan is not marked for investigation.")
    return _set_attention(plan, attention=False, reason=_require_reason(reason), actor=actor)


@transaction.atomic
def plan_discard(*, plan: RolloutPlan, reason: str, actor: Actor) -> RolloutPlan:
    """Drop a draft that never started. It stays in the log as discarded, and the flag may
    get a new plan in that environment."""
    plan = _locked(plan)
    _check_permission(plan, actor, Action.DISCARD)
    _expect(plan, (Status.DRAFT,), "discarded (only a draft can be; roll back a started plan)")
    reason = _require_reason(reason)
    before = _before(plan)
    plan.status = Status.DISCARDED
    plan.save(update_fields=["status", "updated_at"])
    _decide(plan, Action.DISCARD, actor, reason)
    _audit(plan, AuditAction.PLAN_DISCARDED, actor, f"Discarded the draft plan for {plan.flag.key} in "
                                                    f"{plan.environment.name}", reason, before)
    return plan


@transaction.atomic
def plan_sync(plan: RolloutPlan) -> RolloutPlan:
    """Move a plan whose pending change request was applied (or forget one closed without
    applying). Idempotent: the status check runs under the plan's lock."""
    plan = _locked(plan)
    _sync_locked(plan, plan_stages(plan))
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
                plan = _locked(plan)
                stages = plan_stages(plan)
                _sync_locked(plan, stages)
                if plan.status == Status.RUNNING:
                    _pause_locked(plan, reason=reason, actor=actor, evidence=plan_evidence(plan, stages=stages))
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


# --- guardrails on a schedule ---------------------------------------------------------------


def _plan_url(plan: RolloutPlan) -> str:
    return reverse("rollouts:plan_detail", kwargs={"project_key": plan.project.key, "pk": plan.pk})


@transaction.atomic
def plan_guardrails_check(*, plan: RolloutPlan) -> bool:
    """Judge a running plan's current stage; on a red guardrail record the breach, pause the
    plan (or roll it back, as the plan says) as the system, and tell the owner and the
    approvers. Returns whether it breached."""
    plan = _locked(plan)
    stages = plan_stages(plan)
    _sync_locked(plan, stages)
    if plan.status != Status.RUNNING or plan.stage_index < 0:
        return False
    evidence = plan_evidence(plan, stages=stages)
    red = [g["message"] for g in evidence["guardrails"] if g["status"] == RED]
    if not red:
        return False
    reason = "Guardrail breached: " + "; ".join(red)
    _decide(plan, Action.BREACH, GUARDRAILS, reason, evidence=evidence)
    _audit(plan, AuditAction.PLAN_BREACHED, GUARDRAILS, f"{plan.flag.key} in {plan.environment.name}, stage "
                                                        f"{plan.stage_index + 1}: {'; '.join(red)}", reason)
    outcome = ""
    if plan.on_breach == RolloutPlan.OnBreach.ROLLBACK:
        try:
            with transaction.atomic():
                _rollback_locked(plan, reason=reason, actor=GUARDRAILS, evidence=evidence)
            outcome = f"rolled back to {plan.baseline}"
        except ValidationError as exc:  # e.g. the baseline is riskier than what is served: never wait
            plan.refresh_from_db(fields=["status", "pending_change_request", "updated_at"])
            logger.warning("Roll-back of rollout plan %s on a breach refused (%s); pausing instead", plan.pk, exc)
            reason = (f"{reason}. Rolling back to {plan.baseline} would need approval here, so the plan was "
                      "paused instead.")
    if not outcome:
        _pause_locked(plan, reason=reason, actor=GUARDRAILS, evidence=evidence)
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
