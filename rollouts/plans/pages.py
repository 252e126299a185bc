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
from rollouts.plans.guardrails import AMBER, GREEN, RED, Arm, compare, judge
from telemetry import histogram as histograms
from telemetry.models import Metric
from telemetry.selectors import series as metric_series
from telemetry.selectors import variance

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
        action = {RolloutPlan.OnBreach.STEP_BACK: ("steps back to its last good stage" if plan.stage_index > 0
                                                   else f"rolls back to {plan.baseline}"),
                  RolloutPlan.OnBreach.ROLLBACK: f"rolls back to {plan.baseline}"}.get(plan.on_breach, "pauses")
        return f"{attention}Guardrail breached: the plan {action} at the next check; pause or roll back now"
    stage = stages[plan.stage_index]
    left = _bake_left(plan, stage, now)
    last = plan.stage_index >= len(stages) - 1
    step = f"promote {plan.candidate}" if last else f"advance to stage {plan.stage_index + 2} ({stages[plan.stage_index + 1].name})"
    if left is not None:
        return f"{attention}Baking: {step} in {_countdown(left)}"
    if status == AMBER:
        return f"{attention}{step[0].upper()}{step[1:]} (guardrails not yet clear)"
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
            elif (evidence or {}).get("untrustworthy"):
                blocked = "Sample ratio mismatch: " + evidence["sample_ratio"]["message"]
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
    metrics = {m.key: m for m in Metric.objects.filter(project=project)} if evidence else {}
    open_rows, closed_rows = [], []
    for plan in plan_list:
        stages = stages_by_plan.get(plan.pk, [])
        judged = evidence.get(plan.pk)
        status = judged["status"] if judged else None
        row = BoardRow(plan=plan, stages=stages, status=status, next_step=next_step(plan, stages, status, now),
                       time_in_stage=_duration(now - plan.stage_entered_at) if plan.stage_entered_at else "—",
                       messages=[_named(g["message"], g["metric"], metrics) for g in judged["guardrails"]
                                 if g["status"] != GREEN] if judged else [])
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


def _window_of(evidence: dict[str, Any]) -> tuple[datetime.datetime, datetime.datetime] | None:
    """The stage's evidence window the evidence was judged on (None for evidence without one)."""
    window = evidence.get("window") or {}
    try:
        return (datetime.datetime.fromisoformat(window["start"]), datetime.datetime.fromisoformat(window["end"]))
    except (KeyError, TypeError, ValueError):
        return None


def _cumulative(rows: list[dict[str, Any]], plan: RolloutPlan, window: tuple[datetime.datetime, datetime.datetime],
                bucket: int, metric_kind: str) -> list[tuple[datetime.datetime, Arm, Arm]]:
    """(end of slot, candidate, baseline) with everything from the stage's entry to that slot's
    end added up: what a check at that time judged (the last one at the window's end: nothing
    came after it). Slots that start before the entry are left
    out; the series' slots are aligned on the entry (`_charts`) except for hourly and daily
    buckets, whose first partial hour is then missing. Exposures per slot are not in the
    series, so a count metric's arm counts its outcome events as its exposures (its value
    reads per event, not per exposure, on this chart alone). A mean's variance comes from the
    running sums of the values and their squares (telemetry.selectors.variance, as the stage's
    evidence); only a p95 keeps its merged histogram."""
    width = datetime.timedelta(minutes=bucket)
    start, end = window
    quantile = metric_kind == "p95"
    # per variant: [outcomes, sum, sum of squares, merged histogram]
    running: dict[str, list[Any]] = {plan.candidate: [0, 0.0, 0.0, {}], plan.baseline: [0, 0.0, 0.0, {}]}
    by_slot: dict[datetime.datetime, list[dict[str, Any]]] = {}
    for row in rows:
        if start <= row["bucket"] < end and row["variant"] in running:
            by_slot.setdefault(row["bucket"], []).append(row)

    def arm(counts: list[Any]) -> Arm:
        count, total, squares, hist = counts
        return Arm(count, count, total, variance(count, total, squares), dict(hist) if quantile else None)

    answer = []
    slots = sorted(by_slot)
    stride = math.ceil(len(slots) / charts.BAND_POINTS_CAP) if slots else 1  # at most the cap's points, the last kept
    for i, slot in enumerate(slots):
        for row in by_slot[slot]:
            counts = running[row["variant"]]
            counts[0] += row["count"]
            counts[1] += row["total"]
            counts[2] += row["squares"]
            if quantile:
                histograms.merge_into(counts[3], row["histogram"] or {})
        if (len(slots) - 1 - i) % stride == 0:
            # the last check with outcomes is what the stage's evidence says until now
            at = end if i == len(slots) - 1 else min(slot + width, end)
            answer.append((at, arm(running[plan.candidate]), arm(running[plan.baseline])))
    return answer


def _relative_estimate(candidate: float | None, baseline: float | None) -> float | None:
    return candidate / baseline - 1 if candidate is not None and baseline else None


def _open_below(low: float | None) -> float | None:
    """A relative difference bounded below only by -100 % (a ratio of 0) is not bounded at all
    (as guardrails.relative_words reads it)."""
    return None if low is None or low <= -1 else low


def _open_above(high: float | None) -> float | None:
    """Likewise a relative difference of a million-fold or more (guardrails.relative_words)."""
    return None if high is None or high >= 1e6 else high


def _named(message: str, key: str, metrics: dict[str, Metric]) -> str:
    """A verdict's words with the metric's name for its key."""
    metric = metrics.get(key)
    return metric.name + message[len(key):] if metric and message.startswith(key) else message


def _bands(plan: RolloutPlan, metric: Metric, evidence: dict[str, Any], steps: list[tuple[datetime.datetime, Arm, Arm]],
           window: tuple[datetime.datetime, datetime.datetime], *, primary: bool) -> list[dict[str, Any]]:
    """One band chart per guardrail on this metric (and one for the primary metric): each check
    from the stage's entry judged again on the cumulative evidence (guardrails.judge, compare)."""
    bands = []
    for judged in [g for g in evidence.get("guardrails", []) if g["metric"] == metric.key]:
        relative = judged["kind"].startswith("relative")
        points = []
        for at, candidate, baseline in steps:
            result = judge(judged, candidate=candidate, baseline=baseline, metric_kind=metric.kind)
            estimate = (_relative_estimate(result.candidate_value, result.baseline_value) if relative
                        else result.candidate_value)
            low, high = ((_open_below(result.interval_low), _open_above(result.interval_high)) if relative
                         else (result.interval_low, result.interval_high))
            points.append(charts.BandPoint(at, low, high, estimate,
                                           result.candidate_samples, result.baseline_samples))
        allowed = float(judged["threshold"]) - 1 if relative else float(judged["threshold"])
        tolerant = allowed >= 0 if judged["kind"].endswith("_max") else allowed <= 0  # some regression allowed
        allowed_text = ((f"allowed: {abs(allowed) * 100:.3g} % worse" if tolerant
                         else f"required: {abs(allowed) * 100:.3g} % better") if relative else
                        f"limit: {KIND_LABELS[judged['kind']]} {charts.format_value(allowed, metric.unit)}")
        bands.append(_band(metric, points, window, judged["status"], relative, (allowed, allowed_text),
                           rule=guardrail_text(judged), message=_named(judged.get("message", ""), metric.key, {
                               metric.key: metric})))
    compared = evidence.get("primary")
    if primary and compared:
        points = []
        for at, candidate, baseline in steps:
            result = compare(metric.key, candidate=candidate, baseline=baseline, metric_kind=metric.kind,
                             higher_is_better=metric.higher_is_better)
            points.append(charts.BandPoint(at, _open_below(result["interval_low"]), _open_above(result["interval_high"]),
                                           _relative_estimate(result["candidate_value"], result["baseline_value"]),
                                           candidate.samples(metric.kind), baseline.samples(metric.kind)))
        verdict = {"better": GREEN, "worse": RED}.get(compared.get("direction"), AMBER)
        bands.append(_band(metric, points, window, verdict, True, None, rule="primary metric: candidate against "
                           f"baseline ({'higher' if metric.higher_is_better else 'lower'} is better)",
                           message="Primary metric: " + _named(compared.get("message", ""), metric.key,
                                                               {metric.key: metric})))
    return bands


def _band(metric: Metric, points: list[charts.BandPoint], window: tuple[datetime.datetime, datetime.datetime],
          verdict: str, relative: bool, allowed: tuple[float, str] | None, *, rule: str, message: str) -> dict[str, Any]:
    scale = "relative difference, candidate against baseline" if relative else "the candidate's value"
    return {"rule": rule, "verdict": verdict, "relative": relative, "message": message,
            "allowed": allowed[1] if allowed else "",
            "svg": charts.band_chart(title=f"{metric.name}: {scale}, 95 % confidence sequence", points=points,
                                     start=window[0], end=window[1], verdict=verdict, relative=relative,
                                     unit=metric.unit, allowed=allowed),
            "rows": charts.band_rows(points, relative=relative, unit=metric.unit)}


def _charts(plan: RolloutPlan, stages: list[RolloutStage], metrics: dict[str, Metric], evidence: dict[str, Any],
            entries: dict[int, datetime.datetime], now: datetime.datetime) -> list[dict[str, Any]]:
    """Per metric (the primary one, then each guardrail's): the stage's confidence sequences
    over time (`bands`) and the per-variant values over the whole plan, from one `series`
    read per metric."""
    keys = [plan.flag.primary_metric] if plan.flag.primary_metric else []
    keys += [g["metric"] for stage in stages for g in stage.guardrails]
    keys = [key for i, key in enumerate(keys) if key in metrics and key not in keys[:i]]
    start = (min(entries.values()) if entries else plan.created_at).replace(second=0, microsecond=0)
    start = min(start, now - datetime.timedelta(minutes=30))  # a young plan still gets a readable axis
    window = _window_of(evidence)
    if window:
        start = min(start, window[0])  # the band needs the whole stage
    bucket = charts.bucket_minutes_for(start, now)
    if window and bucket % 60 and window[0] > start:
        # start a whole number of buckets before the stage's entry, so a slot starts there
        width = datetime.timedelta(minutes=bucket)
        start = window[0] - width * math.ceil((window[0] - start) / width)
    markers = [charts.Marker(at, f"{index + 1}. {stages[index].name}") for index, at in sorted(entries.items())
               if index < len(stages)]
    limits = {g["metric"]: g for g in evidence.get("guardrails", [])}
    variants = [plan.baseline, plan.candidate]
    result = []
    for key in keys:
        metric = metrics[key]
        rows = metric_series(flag_id=plan.flag_id, environment_id=plan.environment_id, metric_key=key,
                             start=start, end=now, bucket_minutes=bucket)
        by_variant: dict[str, list[charts.Point]] = {variant: [] for variant in variants}
        for row in rows:
            if row["value"] is not None and row["variant"] in by_variant:
                # drawn at the middle of its bucket, where its events happened on average
                by_variant[row["variant"]].append(charts.Point(row["bucket"] + datetime.timedelta(minutes=bucket / 2),
                                                               float(row["value"]), row["count"]))
        judged = limits.get(key)
        limit = None
        if judged and judged.get("limit") is not None:
            limit = (float(judged["limit"]), f"Limit now: {charts.format_value(judged['limit'], metric.unit)}")
        samples = {variant: sum(p.count for p in points) for variant, points in by_variant.items()}
        steps = _cumulative(rows, plan, window, bucket, metric.kind) if window else []
        result.append({
            "metric": metric, "primary": key == plan.flag.primary_metric, "bucket_minutes": bucket,
            "bands": _bands(plan, metric, evidence, steps, window, primary=key == plan.flag.primary_metric)
            if window else [],
            "svg": charts.line_chart(title=f"{metric.name} per {bucket} min", series=by_variant, start=start, end=now,
                                     unit=metric.unit, markers=markers, limit=limit),
            "legend": [{**item, "samples": samples[item["variant"]]} for item in charts.legend(variants)],
            "rows": charts.table_rows(by_variant, metric.unit),
        })
    return result


STOPPING = (Action.PAUSE, Action.ROLLBACK, Action.STEP_BACK, Action.BREACH)
MOVING = (Action.START, Action.ADVANCE, Action.RESUME, Action.PROMOTE)


def _what_the_plan_did(plan: RolloutPlan, stages: list[RolloutStage], decisions: list[ReleaseDecision],
                       metrics: dict[str, Metric]) -> str:
    """The plan's last pause, step back or roll-back (a breach's own decision when nothing
    followed it) in words, with its reason: unless the plan has moved on since."""
    last = None
    for decision in decisions:
        if decision.action in STOPPING and not (last and last.action != Action.BREACH
                                                 and decision.action == Action.BREACH):
            last = decision
        elif decision.action in MOVING:
            last = None
    if last is None:
        return ""
    stage = stages[last.to_stage] if 0 <= last.to_stage < len(stages) else None
    where = f"stage {last.to_stage + 1} ({stage.name})" if stage else "its start"
    done = {Action.ROLLBACK: f"rolled back to {plan.baseline}", Action.STEP_BACK: f"stepped back to {where}",
            Action.PAUSE: f"paused at {where}", Action.BREACH: f"breach recorded at {where}"}[last.action]
    reason = last.reason.strip().rstrip(".")
    for key in metrics:
        reason = reason.replace(f"{key} is ", f"{metrics[key].name} is ")
    by = f"{done} by {last.actor_label} on {last.created_at:%d %b %H:%M}"
    return f"{reason}; {by}." if reason else f"{by[0].upper()}{by[1:]}."


def decision_words(plan: RolloutPlan, stages: list[RolloutStage], evidence: dict[str, Any],
                   decisions: list[ReleaseDecision], metrics: dict[str, Metric]) -> dict[str, Any]:
    """The evidence and the plan's decision in words: each guardrail's verdict, the primary
    metric's, what the plan did about it, the split's sample-ratio check and, per variant,
    the share of exposures served something other than assigned."""
    guardrails = [{"status": g["status"], "text": _named(g.get("message", ""), g["metric"], metrics)}
                  for g in evidence.get("guardrails", [])]
    compared = evidence.get("primary")
    primary = None
    if compared:
        primary = {"direction": compared.get("direction", "unclear"),
                   "text": "Primary metric: " + _named(compared.get("message", ""), compared["metric"], metrics)}
    ratio = evidence.get("sample_ratio")
    variants = evidence.get("variants", {})
    fallbacks = [f"{variant}: {charts.format_value(variants[variant]['fallback_rate'], '%')} of exposures served "
                 "something else (AI fallbacks)"
                 for variant in [plan.baseline, plan.candidate] + sorted(set(variants) - {plan.baseline, plan.candidate})
                 if variant in variants and (variants[variant].get("fallback_rate") or 0) > 0]
    return {"guardrails": guardrails, "primary": primary, "did": _what_the_plan_did(plan, stages, decisions, metrics),
            "sample_ratio": ratio, "untrustworthy": bool(evidence.get("untrustworthy")), "fallbacks": fallbacks,
            "any": bool(guardrails or primary or ratio or fallbacks)}


def _guardrail_rows(evidence: dict[str, Any], metrics: dict[str, Metric]) -> list[dict[str, Any]]:
    rows = []
    for judged in evidence.get("guardrails", []):
        metric = metrics.get(judged["metric"])
        unit = metric.unit if metric else ""
        rows.append({**judged, "name": metric.name if metric else judged["metric"], "rule": guardrail_text(judged),
                     "said": _named(judged.get("message", ""), judged["metric"], metrics),
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
    evidence = (measurement.plan_evidence(plan, stages=stages, now=now, fresh_sample_ratio=False)
                if plan.status in RolloutPlan.OPEN else {})
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
        "words": decision_words(plan, stages, evidence, decisions, metrics),
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
    decisions = list(plan.decisions.order_by("id"))
    entries = stage_entries(decisions)
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
        "words": decision_words(plan, stages, shown, decisions if live else [], metrics),
        "sample_ratio": shown.get("sample_ratio"), "primary": shown.get("primary"),
    }
