"""A plan's evidence: telemetry over the current stage's window (from its entry, floored to
the minute), each guardrail judged on it with sequential statistics (rollouts.plans.guardrails),
the primary metric compared the same way, and the split's sample-ratio check.

**Sample ratio mismatch.** A stage that splits traffic by percentage (0 < share < 100 %) puts
each unit on the candidate's side when its hash bucket (flags.evaluation.engine.bucket_of) falls
in the candidate's share. The hash is independent of everything else, so among the units that
reached the flag in the stage's window (`UnitExposure`, whatever they were served: the plan's
segment rule gives some units on the baseline's side the candidate) the share on the candidate's
side should be the configured weight. Pearson's chi-square test of the two counts against the
weights (sequential.sample_ratio) with p < 0.001 marks the evidence untrustworthy: exposures are
being lost or duplicated on one side (a variant crashing before it reports, a redirect, bots),
so no guardrail on it can be believed. It reads at most `SRM_UNIT_SAMPLE` units, the first by
unit key (an order the hash does not follow, so the test stays valid on the sample): one query
and one hash per unit, tens of milliseconds on a big stage. The sweep and every plan action
compute it afresh and keep it in the cache for `SRM_CACHE_SECONDS`; the plan page reads that
(`fresh_sample_ratio=False`) and computes it only when it is missing. Units assigned against
the split (on the candidate's side but assigned the baseline, which only the flag's own rules
before the split can explain) are counted beside it.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.core.cache import cache
from django.utils import timezone

from flags.evaluation.engine import BUCKETS, bucket_of
from rollouts.models import RolloutPlan, RolloutStage
from rollouts.plans import sequential
from rollouts.plans.design import SPLIT_TOTAL, plan_stages
from rollouts.plans.guardrails import AMBER, Arm, compare, evaluate_guardrails, overall
from telemetry.models import Metric, UnitExposure
from telemetry.selectors import Window
from telemetry.selectors import evidence_many as telemetry_evidence_many

SRM_UNIT_SAMPLE = 20_000  # enough to see a 3 % skew of a 50/50 split at p < 0.001
SRM_CACHE_SECONDS = 180  # the sweep refreshes it every minute while the plan runs


def _metric_kinds(project_ids: set[int], keys: set[str]) -> dict[tuple[int, str], tuple[str, bool]]:
    """{(project id, key): (kind, higher is better)}."""
    return {(project_id, key): (kind, better) for project_id, key, kind, better in Metric.objects.filter(
        project_id__in=project_ids, key__in=keys).values_list("project_id", "key", "kind", "higher_is_better")}


def split_weights(plan: RolloutPlan, stage: RolloutStage | None) -> dict[str, float] | None:
    """The stage's percentage split as {variant: weight}, or None when it splits nothing."""
    if stage is None or not 0 < stage.percentage < SPLIT_TOTAL:
        return None
    return {plan.baseline: float(SPLIT_TOTAL - stage.percentage), plan.candidate: float(stage.percentage)}


def sample_ratio_check(plan: RolloutPlan, stage: RolloutStage | None, start: datetime.datetime, *,
                       fresh: bool = True) -> dict[str, Any] | None:
    """The stage's split tested against its weights (module docstring); None for a stage
    without a split or before any unit was seen. One query, or none from the cache when not
    `fresh`."""
    weights = split_weights(plan, stage)
    if weights is None:
        return None
    key = f"plan-sample-ratio:{plan.pk}:{plan.stage_index}:{start.isoformat()}"
    if not fresh and (kept := cache.get(key)) is not None:
        return kept["check"]
    check = _sample_ratio(plan, stage, start, weights)
    cache.set(key, {"check": check}, SRM_CACHE_SECONDS)
    return check


def _sample_ratio(plan: RolloutPlan, stage: RolloutStage, start: datetime.datetime,
                  weights: dict[str, float]) -> dict[str, Any] | None:
    rows = (UnitExposure.objects.filter(flag_id=plan.flag_id, environment_id=plan.environment_id,
                                        variant__in=(plan.baseline, plan.candidate), last_seen__gte=start)
            .order_by("unit", "-last_seen").values_list("unit", "variant")[:SRM_UNIT_SAMPLE])
    assigned: dict[str, str] = {}
    for unit, variant in rows:
        assigned.setdefault(unit, variant)  # the latest assignment of a unit seen twice
    # the candidate is listed last in the stage's split (design.stage_targeting)
    first_candidate_bucket = BUCKETS * (SPLIT_TOTAL - stage.percentage) // SPLIT_TOTAL
    sides = {plan.baseline: 0, plan.candidate: 0}
    against = 0
    for unit, variant in assigned.items():
        on_candidate_side = bucket_of(plan.flag.key, plan.flag.salt, unit) >= first_candidate_bucket
        sides[plan.candidate if on_candidate_side else plan.baseline] += 1
        against += on_candidate_side and variant == plan.baseline
    test = sequential.sample_ratio(sides, weights)
    if test is None:
        return None
    units = sum(sides.values())
    expected = test.expected_share[plan.candidate]
    observed = sides[plan.candidate] / units
    message = (f"{sides[plan.candidate]} of {units} units ({100 * observed:.1f} %) fall in {plan.candidate}'s "
               f"{100 * expected:.1f} % of the split (p = {test.p_value:.2g}")
    message += (f" < {sequential.SRM_P_VALUE:g}): sample ratio mismatch — units are being lost or counted twice on "
                "one side, so this stage's evidence cannot be trusted" if test.mismatch
                else "): the split looks as configured")
    return {"units": units, "observed": sides, "expected_share": test.expected_share, "observed_share": observed,
            "p_value": test.p_value, "mismatch": test.mismatch, "assigned_against_split": against,
            "sampled": len(rows) >= SRM_UNIT_SAMPLE, "checked_at": timezone.now().isoformat(), "message": message}


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
            kinds: dict[tuple[int, str], tuple[str, bool]], sample_ratio: dict[str, Any] | None) -> dict[str, Any]:
    """The stored evidence. With a sample ratio mismatch every guardrail's verdict is kept but
    the stage's status is amber: nothing on this evidence may expand the plan (or breach it)."""
    own = {key: kind for (project_id, key), kind in kinds.items() if project_id == plan.project_id}
    results = evaluate_guardrails(guardrails, evidence=variants, baseline=plan.baseline, candidate=plan.candidate,
                                  metric_kinds={key: kind for key, (kind, _) in own.items()})
    primary = None
    if plan.flag.primary_metric in own:
        kind, higher_is_better = own[plan.flag.primary_metric]
        primary = compare(plan.flag.primary_metric, candidate=Arm.of(variants.get(plan.candidate),
                                                                      plan.flag.primary_metric),
                          baseline=Arm.of(variants.get(plan.baseline), plan.flag.primary_metric), metric_kind=kind,
                          higher_is_better=higher_is_better)
    untrustworthy = bool(sample_ratio and sample_ratio["mismatch"])
    return {"stage": plan.stage_index, "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
            "variants": variants, "guardrails": [r.as_dict() for r in results],
            "status": AMBER if untrustworthy else overall(results), "primary": primary,
            "sample_ratio": sample_ratio, "untrustworthy": untrustworthy}


def _stage(plan: RolloutPlan, stages: list[RolloutStage]) -> RolloutStage | None:
    return stages[plan.stage_index] if 0 <= plan.stage_index < len(stages) else None


def plan_evidence(plan: RolloutPlan, *, stages: list[RolloutStage] | None = None,
                  now: datetime.datetime | None = None, fresh_sample_ratio: bool = True) -> dict[str, Any]:
    """The evidence of the current stage and each of its guardrails judged green, amber or
    red. JSON-able: it is stored as is. A page passes `fresh_sample_ratio=False` to read the
    sample-ratio check the sweep keeps in the cache."""
    stages = stages if stages is not None else plan_stages(plan)
    window, guardrails = _window(plan, stages, now or timezone.now())
    kinds = _metric_kinds({plan.project_id}, set(window.metric_keys))
    return _judged(plan, window, guardrails, telemetry_evidence_many([window])[0], kinds,
                   sample_ratio_check(plan, _stage(plan, stages), window.start, fresh=fresh_sample_ratio))


def plans_evidence(plan_list: list[RolloutPlan], *, stages_by_plan: dict[int, list[RolloutStage]],
                   now: datetime.datetime | None = None) -> dict[int, dict[str, Any]]:
    """`plan_evidence` of several plans (the board) in the same five queries as one. The board
    does not run the sample-ratio check (one query per plan); its plans' pages and the sweep do."""
    if not plan_list:
        return {}
    now = now or timezone.now()
    windows = [_window(plan, stages_by_plan.get(plan.pk, []), now) for plan in plan_list]
    answers = telemetry_evidence_many([window for window, _ in windows])
    kinds = _metric_kinds({plan.project_id for plan in plan_list},
                          {key for window, _ in windows for key in window.metric_keys})
    return {plan.pk: _judged(plan, window, guardrails, variants, kinds, None)
            for plan, (window, guardrails), variants in zip(plan_list, windows, answers, strict=True)}
