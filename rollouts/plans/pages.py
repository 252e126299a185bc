"""What the rollout board and the plan page show: reads only, a fixed number of queries per
page whatever the number of decisions or data points.

- `next_step` says, in words, what the plan waits for and who moves it next.
- `available_actions` lists the buttons a person may press now (role and state), each
  with the reason it is blocked, if it is (bake time, breached guardrail, pending request).
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from flags.models import Project, Targeting
from rollouts.change_control import approving, incident_mode
from rollouts.models import Incident, ReleaseDecision, RolloutPlan, RolloutStage
from rollouts.plans import charts, design, measurement, transitions
from rollouts.plans.guardrails import AMBER, GREEN, RED
from telemetry.models import Metric
from telemetry.selectors import series as metric_series

Status = RolloutPlan.Status
Action = ReleaseDecision.Action
KIND_LABELS = {"absolute_max": "at most", "absolute_min": "at least", "relative_max": "at most",
               "relative_min": "at least"}


def _duration(delta: datetime.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        hours, rest = divmod(minutes, 60)
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    days, rest = divmod(minutes, 1440)
    return f"{days} d {rest // 60} h" if rest // 60 else f"{days} d"


def _countdown(left: datetime.timedelta) -> str:
    """Time left, rounded up to the minute (a wait never reads "0 min")."""
    if left.total_seconds() < 60:
        return "under a minute"
    return _duration(datetime.timedelta(minutes=math.ceil(left.total_seconds() / 60)))


def guardrail_text(guardrail: dict[str, Any]) -> str:
    """'candidate latency_p95 at most 1.2 × baseline (from 50 samples)'."""
    relation = KIND_LABELS.get(guardrail["kind"], guardrail["kind"])
    threshold = f"{float(guardrail['threshold']):g}"
    against = f"{threshold} × baseline" if guardrail["kind"].startswith("relative") else threshold
    return f"candidate {guardrail['metric']} {relation} {against} (from {guardrail.get('min_samples', 0)} samples)"


def audience_text(stage: RolloutStage) -> str:
    parts = [", ".join(stage.segments)] if stage.segments else []
    if stage.percentage >= design.SPLIT_TOTAL:
        parts = ["everyone"]
    elif stage.percentage:
        parts.append(f"{stage.percentage / 1000:g} % of everyone else")
    return " + ".join(parts) or "nobody yet"


def stage_entries(decisions: list[ReleaseDecision]) -> dict[int, datetime.datetime]:
    """When the plan last entered each stage: decisions that moved it (a start or advance
    applied at once, or one whose change request was applied)."""
    entries: dict[int, datetime.datetime] = {}
    for decision in decisions:
        moved = decision.action in (Action.START, Action.ADVANCE) and (
            decision.change_request_id is None or decision.actor_label == str(transitions.PLAN_SYNC))
        if moved:
            entries[decision.to_stage] = decision.created_at
    return entries


def _bake_left(plan: RolloutPlan, stage: RolloutStage, now: datetime.datetime) -> datetime.timedelta | None:
    if plan.stage_entered_at is None:
        return None
    left = plan.stage_entered_at + datetime.timedelta(minutes=stage.min_bake_minutes) - now
    return left if left.total_seconds() > 0 else None


def next_step(plan: RolloutPlan, stages: list[RolloutStage], status: str | None,
              now: datetime.datetime | None = None) -> str:
    """What happens next, in words, for the board and the plan page."""
    now = now or timezone.now()
    attention = "Investigate, then: " if plan.needs_attention else ""
    if plan.status == Status.DRAFT:
        return f"{attention}Start: enter stage 1 ({stages[0].name})" if stages else "Add stages"
    if plan.status == Status.PAUSED:
        return f"{attention}Resume or roll back"
    if plan.status != Status.RUNNING:
        return "Done"
    if plan.pending_change_request_id:
        return f"{attention}Waiting for approval of CR-{plan.pending_change_request_id}"
    if status == RED:
        return f"{attention}Guardrail breached: the plan pauses at the next check; pause or roll back now"
    stage = stages[plan.stage_index]
    left = _bake_left(plan, stage, now)
    last = plan.stage_index >= len(stages) - 1
    step = f"promote {plan.candidate}" if last else f"advance to stage {plan.stage_index + 2} ({stages[plan.stage_index + 1].name})"
    if left is not None:
        return f"{attention}Baking: {step} in {_countdown(left)}"
    if status == AMBER:
        return f"{attention}{step[0].upper()}{step[1:]} (guardrails still gathering samples)"
    return f"{attention}{step[0].upper()}{step[1:]}"


@dataclass
class PlanAction:
    action: str
    label: str
    style: str = ""
    confirm: str = ""
    blocked: str = ""
    needs_approval: bool = False


def available_actions(plan: RolloutPlan, stages: list[RolloutStage], evidence: dict[str, Any] | None, user: Any,
                      now: datetime.datetime | None = None, *, flag_on: bool = True) -> list[PlanAction]:
    """The buttons `user` may press on this plan now; a blocked one carries its reason."""
    now = now or timezone.now()
    off = "" if flag_on else (f"{plan.flag.key} is off in {plan.environment.name}: a rollout plan never turns a flag "
                              "on; turn it on through a change first.")
    candidates: list[PlanAction] = []
    where = f"{plan.flag.key} in {plan.environment.name}"
    steering = transitions.may_act(user, plan, Action.ADVANCE)
    if plan.status == Status.DRAFT:
        first = stages[0]
        candidates += [PlanAction(Action.START, f"Start: stage 1 ({first.name})", blocked=off,
                                  needs_approval=steering and not off and transitions.step_opens_request(plan, stages),
                                  confirm=f"Start the plan: {audience_text(first)} get {plan.candidate}?"),
                       PlanAction(Action.DISCARD, "Discard draft", "secondary", f"Discard this draft plan for {where}?")]
    if plan.status == Status.RUNNING:
        blocked = off
        if blocked:
            pass
        elif plan.pending_change_request_id:
            blocked = f"Waiting for CR-{plan.pending_change_request_id} to be approved and applied."
        elif plan.stage_index >= 0:
            stage = stages[plan.stage_index]
            left = _bake_left(plan, stage, now)
            red = [g["message"] for g in (evidence or {}).get("guardrails", []) if g["status"] == RED]
            if left is not None:
                blocked = (f"Stage {plan.stage_index + 1} bakes for "
                           f"{_duration(datetime.timedelta(minutes=stage.min_bake_minutes))}: {_countdown(left)} left.")
            elif red:
                blocked = "A guardrail is breached: " + "; ".join(red)
        if plan.stage_index < len(stages) - 1:
            nxt = stages[plan.stage_index + 1]
            candidates.append(PlanAction(Action.ADVANCE, f"Advance to stage {plan.stage_index + 2} ({nxt.name})",
                                         blocked=blocked,
                                         needs_approval=steering and not blocked and transitions.step_opens_request(plan, stages),
                                         confirm=f"Advance {where}: {audience_text(nxt)} get {plan.candidate}?"))
        if plan.stage_index >= 0:
            later = steering and not blocked and transitions.step_opens_request(plan, stages, promote=True)
            candidates.append(PlanAction(Action.PROMOTE, f"Promote {plan.candidate} to everyone",
                                         "secondary" if plan.stage_index < len(stages) - 1 else "",
                                         f"Promote {plan.candidate}: it becomes the default for everyone in "
                                         f"{plan.environment.name} and the plan completes?", blocked=blocked,
                                         needs_approval=later))
        candidates.append(PlanAction(Action.PAUSE, "Pause", "secondary",
                                     f"Pause {where}? Traffic stays as it is; expansion stops."))
    if plan.status == Status.PAUSED:
        candidates.append(PlanAction(Action.RESUME, "Resume", confirm=f"Resume {where}? The stage's bake time "
                                                                        "starts over."))
    if plan.status in (Status.RUNNING, Status.PAUSED):
        candidates.append(PlanAction(Action.ROLLBACK, f"Roll back to {plan.baseline}", "danger",
                                     f"Roll back {where}: everyone gets {plan.baseline} at once. No approval needed."))
    if plan.status in RolloutPlan.OPEN:
        if plan.needs_attention:
            candidates.append(PlanAction(Action.RESOLVE, "Close the investigation", "secondary"))
        else:
            candidates.append(PlanAction(Action.INVESTIGATE, "Mark for investigation", "secondary"))
    return [c for c in candidates if transitions.may_act(user, plan, c.action)]


# --- the board --------------------------------------------------------------------------------


@dataclass
class BoardRow:
    plan: RolloutPlan
    stages: list[RolloutStage]
    status: str | None
    next_step: str
    time_in_stage: str
    messages: list[str] = field(default_factory=list)

    @property
    def stage(self) -> RolloutStage | None:
        return self.stages[self.plan.stage_index] if 0 <= self.plan.stage_index < len(self.stages) else None


def board_plans(project: Project) -> QuerySet[RolloutPlan]:
    return (RolloutPlan.objects.filter(project=project)
            .select_related("flag__owner_user", "flag__fallback_variation", "environment", "project")
            .order_by("-updated_at"))


def board(project: Project, now: datetime.datetime | None = None) -> tuple[list[BoardRow], list[BoardRow]]:
    """(open plans, closed plans): the stage, time in it, guardrail status and next step."""
    now = now or timezone.now()
    plan_list = list(board_plans(project)[:200])
    stages_by_plan: dict[int, list[RolloutStage]] = {}
    for stage in RolloutStage.objects.filter(plan__in=[p.pk for p in plan_list]).order_by("plan_id", "order"):
        stages_by_plan.setdefault(stage.plan_id, []).append(stage)
    evidence = measurement.plans_evidence([p for p in plan_list if p.status in (Status.RUNNING, Status.PAUSED)],
                                    stages_by_plan=stages_by_plan, now=now)
    open_rows, closed_rows = [], []
    for plan in plan_list:
        stages = stages_by_plan.get(plan.pk, [])
        judged = evidence.get(plan.pk)
        status = judged["status"] if judged else None
        row = BoardRow(plan=plan, stages=stages, status=status, next_step=next_step(plan, stages, status, now),
                       time_in_stage=_duration(now - plan.stage_entered_at) if plan.stage_entered_at else "—",
                       messages=[g["message"] for g in judged["guardrails"] if g["status"] != GREEN] if judged else [])
        (open_rows if plan.status in RolloutPlan.OPEN else closed_rows).append(row)
    return open_rows, closed_rows


# --- the plan page ----------------------------------------------------------------------------


@dataclass
class StageRow:
    index: int
    stage: RolloutStage
    state: str  # done, current, waiting, next, later
    entered_at: datetime.datetime | None
    audience: str
    guardrails: list[str]
    # Why entering it needs approval ("" when it does not): the stage's own setting, or the
    # governed environment's policy (the candidate's audience widens).
    approval: str = ""
    # The change request it waits for, or the one it was entered through.
    change_request_id: int | None = None
    # When the current stage was resumed, if it was since it was entered: its bake time and
    # evidence count from then (plan.stage_entered_at), not from the entry.
    resumed_at: datetime.datetime | None = None

    @property
    def bake(self) -> str:
        return _duration(datetime.timedelta(minutes=self.stage.min_bake_minutes))


def _widens(stages: list[RolloutStage], index: int) -> bool:
    """Whether entering stage `index` serves the candidate to more people than the stage before."""
    stage = stages[index]
    previous = stages[index - 1] if index > 0 else None
    if previous is None:
        return bool(stage.segments) or stage.percentage > 0
    return bool(set(stage.segments) - set(previous.segments)) or stage.percentage > previous.percentage


def _approval(plan: RolloutPlan, stages: list[RolloutStage], index: int, next_opens: bool | None) -> str:
    """Why entering stage `index` needs approval, in words ("" when it does not). The next
    stage is judged as submitting it now would be (`next_opens`); later ones by the rule the
    policy applies to them: in a governed environment, widening the audience of a candidate
    other than the fallback waits for approval."""
    if stages[index].needs_approval:
        return "needs approval (set on this stage)"
    if index == plan.stage_index + 1 and next_opens is not None:
        return "needs approval (the environment's approval policy)" if next_opens else ""
    if (plan.environment.is_governed and plan.candidate != plan.flag.fallback_variation.key
            and _widens(stages, index)):
        return "needs approval (governed environment: the candidate's audience widens)"
    return ""


def _stage_requests(decisions: list[ReleaseDecision]) -> dict[int, int]:
    """The change request each stage was entered through (or asked for), by stage index."""
    requests: dict[int, int] = {}
    for decision in decisions:
        if decision.action in (Action.START, Action.ADVANCE) and decision.change_request_id:
            requests[decision.to_stage] = decision.change_request_id
    return requests


def _resumed_at(plan: RolloutPlan, decisions: list[ReleaseDecision]) -> datetime.datetime | None:
    """When the current stage was last resumed, if a resume came after its entry: the time
    `plan.stage_entered_at` holds then, from which bake time and evidence count."""
    resumed = None
    for decision in decisions:
        moved = decision.action in (Action.START, Action.ADVANCE) and decision.to_stage == plan.stage_index and (
            decision.change_request_id is None or decision.actor_label == str(transitions.PLAN_SYNC))
        if moved:
            resumed = None
        elif decision.action == Action.RESUME:
            resumed = plan.stage_entered_at
    return resumed


def _stage_rows(plan: RolloutPlan, stages: list[RolloutStage], entries: dict[int, datetime.datetime],
                waiting_for: int | None, *, decisions: list[ReleaseDecision] | None = None,
                next_opens: bool | None = None) -> list[StageRow]:
    decisions = decisions or []
    requests = _stage_requests(decisions)
    resumed = _resumed_at(plan, decisions) if plan.status in RolloutPlan.OPEN else None
    rows = []
    for index, stage in enumerate(stages):
        if plan.status == Status.COMPLETED or index < plan.stage_index:
            state = "done"
        elif plan.status not in RolloutPlan.OPEN:
            state = "stopped" if index == plan.stage_index else "later"
        elif index == plan.stage_index:
            state = "current"
        elif index == waiting_for:
            state = "waiting"
        elif index == plan.stage_index + 1:
            state = "next"
        else:
            state = "later"
        shared = index > 0 and stage.guardrails == stages[0].guardrails
        pending = plan.pending_change_request_id if index == waiting_for else None
        entered_through = requests.get(index) if state in ("done", "current", "stopped") else None
        approval = (("entered with approval" if entered_through else "") if state in ("done", "current", "stopped")
                    else _approval(plan, stages, index, next_opens) or ("needs approval (its change request is open)"
                                                                        if pending else ""))
        rows.append(StageRow(index, stage, state, entries.get(index), audience_text(stage),
                             [] if shared else [guardrail_text(g) for g in stage.guardrails],
                             approval=approval,
                             change_request_id=pending or entered_through,
                             resumed_at=resumed if state == "current" else None))
    return rows


def _charts(plan: RolloutPlan, stages: list[RolloutStage], metrics: dict[str, Metric], evidence: dict[str, Any],
            entries: dict[int, datetime.datetime], now: datetime.datetime) -> list[dict[str, Any]]:
    keys = [plan.flag.primary_metric] if plan.flag.primary_metric else []
    keys += [g["metric"] for stage in stages for g in stage.guardrails]
    keys = [key for i, key in enumerate(keys) if key in metrics and key not in keys[:i]]
    start = (min(entries.values()) if entries else plan.created_at).replace(second=0, microsecond=0)
    start = min(start, now - datetime.timedelta(minutes=30))  # a young plan still gets a readable axis
    bucket = charts.bucket_minutes_for(start, now)
    markers = [charts.Marker(at, f"{index + 1}. {stages[index].name}") for index, at in sorted(entries.items())
               if index < len(stages)]
    limits = {g["metric"]: g for g in evidence.get("guardrails", [])}
    variants = [plan.baseline, plan.candidate]
    result = []
    for key in keys:
        metric = metrics[key]
        by_variant: dict[str, list[charts.Point]] = {variant: [] for variant in variants}
        for row in metric_series(flag_id=plan.flag_id, environment_id=plan.environment_id, metric_key=key,
                                 start=start, end=now, bucket_minutes=bucket):
            if row["value"] is not None and row["variant"] in by_variant:
                # drawn at the middle of its bucket, where its events happened on average
                by_variant[row["variant"]].append(charts.Point(row["bucket"] + datetime.timedelta(minutes=bucket / 2),
                                                               float(row["value"]), row["count"]))
        judged = limits.get(key)
        limit = None
        if judged and judged.get("limit") is not None:
            limit = (float(judged["limit"]), f"Limit now: {charts.format_value(judged['limit'], metric.unit)}")
        samples = {variant: sum(p.count for p in points) for variant, points in by_variant.items()}
        result.append({
            "metric": metric, "primary": key == plan.flag.primary_metric, "bucket_minutes": bucket,
            "svg": charts.line_chart(title=f"{metric.name} per {bucket} min", series=by_variant, start=start, end=now,
                                     unit=metric.unit, markers=markers, limit=limit),
            "legend": [{**item, "samples": samples[item["variant"]]} for item in charts.legend(variants)],
            "rows": charts.table_rows(by_variant, metric.unit),
        })
    return result


def _guardrail_rows(evidence: dict[str, Any], metrics: dict[str, Metric]) -> list[dict[str, Any]]:
    rows = []
    for judged in evidence.get("guardrails", []):
        metric = metrics.get(judged["metric"])
        unit = metric.unit if metric else ""
        rows.append({**judged, "name": metric.name if metric else judged["metric"], "rule": guardrail_text(judged),
                     "candidate": charts.format_value(judged.get("candidate_value"), unit),
                     "baseline": charts.format_value(judged.get("baseline_value"), unit),
                     "limit_text": charts.format_value(judged.get("limit"), unit)})
    return rows


def _sample_rows(plan: RolloutPlan, evidence: dict[str, Any], metrics: dict[str, Metric]) -> list[dict[str, Any]]:
    variants = evidence.get("variants", {})
    ordered = [plan.baseline, plan.candidate] + sorted(set(variants) - {plan.baseline, plan.candidate})
    rows = []
    for variant in ordered:
        data = variants.get(variant, {})
        rows.append({"variant": variant, "role": ("baseline" if variant == plan.baseline else
                                                  "candidate" if variant == plan.candidate else "other"),
                     "exposures": data.get("exposures", 0), "units": data.get("units", 0),
                     "fallback_rate": charts.format_value(data.get("fallback_rate"), "%"),
                     "metrics": [{"name": metrics[key].name if key in metrics else key, "count": values.get("count", 0)}
                                 for key, values in sorted(data.get("metrics", {}).items())]})
    return rows


def plan_page(plan: RolloutPlan, user: Any, now: datetime.datetime | None = None) -> dict[str, Any]:
    """Everything the plan page shows, in a fixed number of queries."""
    now = now or timezone.now()
    stages = design.plan_stages(plan)
    decisions = list(plan.decisions.select_related("change_request").order_by("id"))
    entries = stage_entries(decisions)
    evidence = measurement.plan_evidence(plan, stages=stages, now=now) if plan.status in RolloutPlan.OPEN else {}
    metrics = {m.key: m for m in Metric.objects.filter(project_id=plan.project_id)}
    pending = plan.pending_change_request
    waiting_for = next((d.to_stage for d in reversed(decisions) if pending and d.change_request_id == pending.pk), None)
    next_opens = (transitions.step_opens_request(plan, stages)
                  if plan.status in RolloutPlan.OPEN and plan.stage_index + 1 < len(stages) else None)
    rows = _stage_rows(plan, stages, entries, waiting_for, decisions=decisions, next_opens=next_opens)
    current_row = next((row for row in rows if row.state == "current"), None)
    return {
        "plan": plan, "stages": rows,
        "current_entered_at": current_row.entered_at if current_row else None,
        "resumed_at": current_row.resumed_at if current_row else None,
        "incident_pause": incident_pause(plan, decisions),
        "shared_guardrails": all(stage.guardrails == stages[0].guardrails for stage in stages) if stages else False,
        "current_stage": stages[plan.stage_index] if 0 <= plan.stage_index < len(stages) else None,
        "time_in_stage": _duration(now - plan.stage_entered_at) if plan.stage_entered_at else "",
        "evidence": evidence, "status": evidence.get("status"),
        "guardrails": _guardrail_rows(evidence, metrics), "samples": _sample_rows(plan, evidence, metrics),
        "charts": _charts(plan, stages, metrics, evidence, entries, now),
        "decisions": list(reversed(decisions)),
        "pending": pending, "pending_approvals": approving.valid_approvals(pending) if pending else 0,
        "next_step": next_step(plan, stages, evidence.get("status"), now),
        "actions": available_actions(plan, stages, evidence, user, now, flag_on=Targeting.objects.filter(
            flag_id=plan.flag_id, environment_id=plan.environment_id, enabled=True).exists()),
    }


def incident_pause(plan: RolloutPlan, decisions: list[ReleaseDecision]) -> Incident | None:
    """The incident whose start paused this plan, while the plan is paused by it still (no
    resume, roll-back or other pause since): the plan page says so, lifted or not. One query,
    only for a plan whose last pause came from incident mode."""
    if plan.status != Status.PAUSED:
        return None
    last = next((d for d in reversed(decisions) if d.action in incident_mode.STATUS_DECISIONS), None)
    if last is None or last.action != Action.PAUSE or not last.reason.startswith(incident_mode.PAUSE_PREFIX):
        return None
    # Incident mode records the incident after it paused the plan, in the same transaction.
    incident = (Incident.objects.filter(environment_id=plan.environment_id, started_at__gte=last.created_at)
                .select_related("lifted_by").order_by("started_at", "id").first())
    return incident if incident is not None and plan.pk in incident_mode.paused_plan_ids(incident) else None


def request_evidence(change_request: Any, now: datetime.datetime | None = None) -> dict[str, Any] | None:
    """For a change request opened by a rollout plan (a stage entry or a promotion): the plan,
    the step it asks for, the evidence the requester saw, and the evidence now (charts,
    guardrails, sample sizes), for the request page. None for other requests."""
    decision = (ReleaseDecision.objects.filter(change_request=change_request,
                                               action__in=(Action.START, Action.ADVANCE, Action.PROMOTE))
                .exclude(actor_label=str(transitions.PLAN_SYNC))
                .select_related("plan__flag__fallback_variation", "plan__environment", "plan__project")
                .order_by("id").first())
    if decision is None:
        return None
    now = now or timezone.now()
    plan = decision.plan
    stages = design.plan_stages(plan)
    entries = stage_entries(list(plan.decisions.order_by("id")))
    metrics = {m.key: m for m in Metric.objects.filter(project_id=plan.project_id)}
    waiting = plan.status in RolloutPlan.OPEN and plan.pending_change_request_id == change_request.pk
    live = measurement.plan_evidence(plan, stages=stages, now=now) if waiting else {}
    shown = live or decision.evidence
    target = stages[decision.to_stage] if decision.action != Action.PROMOTE and decision.to_stage < len(stages) else None
    return {
        "plan": plan, "decision": decision, "target": target,
        "step": (f"Promote {plan.candidate} to everyone" if target is None else
                 f"Stage {decision.to_stage + 1} ({target.name}): {audience_text(target)} get {plan.candidate}"),
        "current_stage": stages[plan.stage_index] if 0 <= plan.stage_index < len(stages) else None,
        "then_status": decision.evidence.get("status"), "status": shown.get("status"), "live": bool(live),
        "guardrails": _guardrail_rows(shown, metrics), "samples": _sample_rows(plan, shown, metrics),
        "charts": _charts(plan, stages, metrics, shown, entries, now),
    }
