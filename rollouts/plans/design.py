"""What a rollout plan is: its stages, what each stage serves (`stage_targeting`; roll-back
and promotion as targeting), the seed article's template, and creating a plan, validated as a
whole. Reads and one write (`plan_create`); traffic moves only in rollouts.plans.transitions.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from audit.constants import AuditAction
from audit.services import record
from audit.validators import check_text_limit
from flags.models import Environment, Flag, Segment, Targeting
from flags.permissions import PLAN_ROLLOUT
from rollouts.models import RolloutPlan, RolloutStage
from rollouts.plans.guardrails import guardrail_problems
from telemetry.models import Metric

SPLIT_TOTAL = 100_000


MAX_STAGES = 20


# The seed article's rollout path: (name, segments, percentage in thousandths, bake minutes, needs approval)
TEMPLATE_STAGES: tuple[tuple[str, list[str], int, int, bool], ...] = (
    ("Internal users", ["internal_users"], 0, 60, False),
    ("Beta accounts", ["internal_users", "beta_accounts"], 0, 24 * 60, False),
    ("5 % of eligible traffic", ["internal_users", "beta_accounts"], 5_000, 24 * 60, False),
    ("50 % experiment", ["internal_users", "beta_accounts"], 50_000, 3 * 24 * 60, False),
    ("Default behaviour", ["internal_users", "beta_accounts"], SPLIT_TOTAL, 0, True),
)


TEMPLATE_MIN_SAMPLES = 50


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


def _stage_problems(stages: list[dict[str, Any]], segment_keys: set[str], metric_keys: dict[str, str]) -> dict[str, str]:
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
            metric = guardrail.get("metric") if isinstance(guardrail, dict) else None
            problems = guardrail_problems(guardrail, metric_keys.get(metric) if isinstance(metric, str) else None)
            if not problems and guardrail["metric"] not in metric_keys:
                problems = [f"metric: {guardrail['metric']} is not in the project's metrics registry"]
            if problems:
                errors[f"{path}.guardrails[{j}]"] = "; ".join(problems)
        previous_segments |= set(segments)
    return errors


@transaction.atomic
def plan_create(*, flag: Flag, environment: Environment, baseline: str, candidate: str, stages: list[dict[str, Any]],
                actor: AbstractBaseUser, assignment_unit: str = "", on_breach: str = RolloutPlan.OnBreach.STEP_BACK,
                reason: str = "") -> RolloutPlan:
    """A draft plan, validated as a whole: baseline ≠ candidate, both variations of the flag,
    segments of the project, exposure that only grows from stage to stage. The candidate's
    risk rank is not judged here: the approval policy judges each stage's change."""
    check_text_limit("reason", reason, limit="plan_reason")
    PLAN_ROLLOUT.require(actor, flag)
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
        errors["on_breach"] = "Step back, roll back or pause."
    if not isinstance(stages, list) or not 1 <= len(stages) <= MAX_STAGES:
        errors["stages"] = f"From 1 to {MAX_STAGES} stages."
        stages = []
    segment_keys = set(Segment.objects.filter(project_id=flag.project_id).values_list("key", flat=True))
    metric_keys = dict(Metric.objects.filter(project_id=flag.project_id).values_list("key", "kind"))
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
                       baseline: str | None = None, on_breach: str = RolloutPlan.OnBreach.STEP_BACK,
                       reason: str = "") -> RolloutPlan:
    """internal users → beta accounts → 5 % of eligible traffic → 50 % experiment → default
    behaviour (needs approval). The baseline defaults to the flag's fallback."""
    return plan_create(flag=flag, environment=environment, baseline=baseline or flag.fallback_variation.key,
                       candidate=candidate, stages=template_stages(flag), actor=actor, on_breach=on_breach,
                       reason=reason)
