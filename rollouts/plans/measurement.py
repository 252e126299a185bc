"""A plan's evidence: telemetry over the current stage's window (from its entry, floored to
the minute) and each guardrail judged on it (rollouts.plans.guardrails)."""

from __future__ import annotations

import datetime
from typing import Any

from django.utils import timezone

from rollouts.models import RolloutPlan, RolloutStage
from rollouts.plans.design import plan_stages
from rollouts.plans.guardrails import evaluate_guardrails, overall
from telemetry.models import Metric
from telemetry.selectors import Window
from telemetry.selectors import evidence_many as telemetry_evidence_many


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
