"""Rollout plans: the board as a list, one plan with its stages, guardrails, decision log and
the actions the token's account may take now; the actions themselves; and a draft plan made
from stages given or from the seed template.

An action asks the rule `rollouts.plans.transitions.RULES` names for it, as the console's plan
page does, then calls the transition, which asks again under the plan's row lock. Traffic moves
only through change control: a stage entry or promotion that needs approval answers 202 with the
change request it opened; the plan moves when that request is applied."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Annotated, Any, Literal

from django.core.exceptions import ValidationError
from django.db.models import Prefetch
from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status

from api.answers import held
from api.auth import needs
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from api.routers.change_requests import IdPath, needs_one_of, newest_first
from api.schemas import ChangeRequestBrief, answers
from flags import permissions
from flags.models import Flag, Project, Targeting
from flags.shortcuts import first_or_404, flag_for, project_for
from rollouts.actors import require_reason
from rollouts.models import ReleaseDecision, RolloutPlan, RolloutPlanStatus, RolloutStage
from rollouts.plans import design, measurement, pages, transitions

router = Router(tags=["rollout-plans"])
Action = ReleaseDecision.Action
PlanActionName = Literal["start", "advance", "promote", "pause", "resume", "rollback", "investigate", "resolve",
                         "discard"]
# The console's plan actions (rollouts/plans/views.py), each through its transition.
ACTIONS: dict[str, Callable[..., RolloutPlan]] = {
    Action.START: transitions.plan_start, Action.ADVANCE: transitions.plan_advance,
    Action.PROMOTE: transitions.plan_promote, Action.PAUSE: transitions.plan_pause,
    Action.RESUME: transitions.plan_resume, Action.ROLLBACK: transitions.plan_rollback,
    Action.INVESTIGATE: transitions.plan_investigate, Action.RESOLVE: transitions.plan_resolve,
    Action.DISCARD: transitions.plan_discard,
}
# The scopes that reach each action's rule: steering is editors' work (write); operators may also
# stop a plan (operate); anyone taking part in changes may mark it for investigation.
ACTION_SCOPES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys((Action.START, Action.ADVANCE, Action.PROMOTE, Action.RESUME, Action.DISCARD), ("write",)),
    **dict.fromkeys((Action.PAUSE, Action.ROLLBACK), ("write", "operate")),
    **dict.fromkeys((Action.INVESTIGATE, Action.RESOLVE), ("write", "approve", "operate")),
}
OPENS_REQUEST = (Action.START, Action.ADVANCE, Action.PROMOTE)


# --- shapes ----------------------------------------------------------------------------------

class PlanGuardrail(Schema):
    metric: str = Field(max_length=100)
    kind: Literal["absolute_max", "absolute_min", "relative_max", "relative_min"]
    threshold: float = Field(ge=-1e9, le=1e9, allow_inf_nan=False,
                             description="A limit, or for relative kinds a factor of the baseline (1.2 = 20 % worse).")
    min_samples: int = Field(50, ge=0, le=10_000_000)


class PlanStage(Schema):
    name: str = Field(min_length=1, max_length=100)
    segments: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=100,
                                description="Segments that get the candidate (keep earlier stages').")
    percentage: int = Field(0, ge=0, le=design.SPLIT_TOTAL,
                            description="Of everyone else, in thousandths of a percent (5000 = 5 %).")
    min_bake_minutes: int = Field(0, ge=0, le=60 * 24 * 90)
    needs_approval: bool = Field(False, description="Entering it needs approval whatever the environment's policy.")
    guardrails: list[PlanGuardrail] = Field(default_factory=list, max_length=10)


class PlanGuardrailOut(Schema):
    metric: str
    kind: str
    threshold: float
    min_samples: int


class PlanStageOut(Schema):
    name: str
    segments: list[str]
    percentage: int = Field(description="Of everyone else, in thousandths of a percent.")
    min_bake_minutes: int
    needs_approval: bool
    guardrails: list[PlanGuardrailOut]


class PlanJudgedGuardrail(Schema):
    metric: str
    kind: str
    threshold: float
    min_samples: int
    status: str = Field(description="green (holds), amber (too few samples), red (breached).")
    candidate_value: float | None
    baseline_value: float | None
    candidate_samples: int
    baseline_samples: int
    limit: float | None
    message: str


class PlanOut(Schema):
    id: int
    flag: str
    environment: str
    baseline: str
    candidate: str
    assignment_unit: str
    status: str
    on_breach: str
    needs_attention: bool
    stage_index: int = Field(description="The stage it is in, from 0; -1 before its first.")
    current_stage: str | None
    stage_entered_at: datetime.datetime | None
    pending_change_request: int | None = Field(description="The change request a stage entry waits for.")
    guardrail_status: str | None = Field(description="Running and paused plans: the current stage's guardrails "
                                                     "overall (green, amber, red).")
    next_step: str
    stages: list[PlanStageOut]
    created_by: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime


class PlanPage(Schema):
    items: list[PlanOut]
    next_cursor: str | None


class PlanAvailableAction(Schema):
    action: str
    label: str
    blocked: str = Field(description="Why it cannot be taken now, or empty.")
    needs_approval: bool


class PlanDecision(Schema):
    action: str
    actor: str
    reason: str
    from_stage: int
    to_stage: int
    change_request: int | None
    created_at: datetime.datetime


class PlanDetail(PlanOut):
    guardrails: list[PlanJudgedGuardrail] = Field(description="The current stage's guardrails, judged now.")
    actions: list[PlanAvailableAction] = Field(description="What the token's account may do now.")
    decisions: list[PlanDecision] = Field(description="The decision log, oldest first.")


class PlanFilters(Schema):
    flag: str = Field("", max_length=100)
    environment: str = Field("", max_length=100)
    status: RolloutPlanStatus | None = None
    cursor: str | None = Field(None, max_length=500)
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class PlanActionIn(Schema):
    reason: str = Field(description="Required: it goes to the plan's decision log and the audit trail.")


class PlanCreateIn(Schema):
    environment: str = Field(max_length=100)
    candidate: str = Field(max_length=100)
    baseline: str | None = Field(None, max_length=100, description="Default: the flag's fallback.")
    stages: list[PlanStage] | None = Field(None, max_length=design.MAX_STAGES,
                                           description="Default: the seed template (internal users → beta accounts "
                                                       "→ 5 % → 50 % → everyone, the last needing approval).")
    on_breach: Literal["pause", "rollback", "step_back"] = Field(
        "step_back", description="On a red guardrail: step_back (default) returns to the previous stage's traffic "
                                 "at once and pauses there (the baseline from the first stage), rollback sends "
                                 "everyone to the baseline, pause only stops expanding.")
    assignment_unit: str = Field("", max_length=100, description="Default: the environment targeting's.")
    reason: str


# --- reading ---------------------------------------------------------------------------------

def _plans(project: Project) -> Any:
    return (RolloutPlan.objects.filter(project=project)
            .select_related("flag__owner_user", "flag__fallback_variation", "environment", "project", "created_by",
                            "pending_change_request")
            .prefetch_related(Prefetch("stages", queryset=RolloutStage.objects.order_by("order"))))


def _stage_out(stage: RolloutStage) -> dict[str, Any]:
    return {"name": stage.name, "segments": stage.segments, "percentage": stage.percentage,
            "min_bake_minutes": stage.min_bake_minutes, "needs_approval": stage.needs_approval,
            "guardrails": [{"metric": g["metric"], "kind": g["kind"], "threshold": g["threshold"],
                            "min_samples": g.get("min_samples", 0)} for g in stage.guardrails]}


def _plan_out(plan: RolloutPlan, stages: list[RolloutStage], evidence: dict[str, Any] | None) -> dict[str, Any]:
    status = evidence["status"] if evidence else None
    return {
        "id": plan.pk, "flag": plan.flag.key, "environment": plan.environment.key, "baseline": plan.baseline,
        "candidate": plan.candidate, "assignment_unit": plan.assignment_unit, "status": plan.status,
        "on_breach": plan.on_breach, "needs_attention": plan.needs_attention, "stage_index": plan.stage_index,
        "current_stage": stages[plan.stage_index].name if 0 <= plan.stage_index < len(stages) else None,
        "stage_entered_at": plan.stage_entered_at, "pending_change_request": plan.pending_change_request_id,
        "guardrail_status": status, "next_step": pages.next_step(plan, stages, status),
        "stages": [_stage_out(stage) for stage in stages],
        "created_by": plan.created_by.get_username() if plan.created_by else None,
        "created_at": plan.created_at, "updated_at": plan.updated_at,
    }


def _judged(plan: RolloutPlan) -> bool:
    return plan.status in (RolloutPlan.Status.RUNNING, RolloutPlan.Status.PAUSED)


def _plan_detail(request: HttpRequest, project: Project, pk: int) -> dict[str, Any]:
    plan = first_or_404(_plans(project).filter(pk=pk), "rollout plan")
    stages = list(plan.stages.all())
    evidence = measurement.plan_evidence(plan, stages=stages) if _judged(plan) else None
    flag_on = Targeting.objects.filter(flag_id=plan.flag_id, environment_id=plan.environment_id, enabled=True).exists()
    actions = pages.available_actions(plan, stages, evidence, request.user, flag_on=flag_on)
    decisions = plan.decisions.order_by("id")
    return {
        **_plan_out(plan, stages, evidence),
        "guardrails": (evidence or {}).get("guardrails", []),
        "actions": [{"action": a.action, "label": a.label, "blocked": a.blocked, "needs_approval": a.needs_approval}
                    for a in actions],
        "decisions": [{"action": d.action, "actor": d.actor_label, "reason": d.reason, "from_stage": d.from_stage,
                       "to_stage": d.to_stage, "change_request": d.change_request_id, "created_at": d.created_at}
                      for d in decisions],
    }


@router.get("/projects/{project_key}/plans", response=answers({200: PlanPage}),
            summary="Rollout plans, newest first, with their stage, guardrail status and next step")
def plan_list(request: HttpRequest, filters: Query[PlanFilters], project_key: str) -> Any:
    needs(request, "read")
    plans = _plans(project_for(request, project_key))
    if filters.flag:
        plans = plans.filter(flag__key=filters.flag)
    if filters.environment:
        plans = plans.filter(environment__key=filters.environment)
    if filters.status:
        plans = plans.filter(status=filters.status)
    rows, next_cursor = newest_first(plans, cursor=filters.cursor, limit=filters.limit)
    stages = {plan.pk: list(plan.stages.all()) for plan in rows}
    # Every running or paused plan judged in the same few queries as one (the board's way).
    evidence = measurement.plans_evidence([plan for plan in rows if _judged(plan)], stages_by_plan=stages)
    return {"items": [_plan_out(plan, stages[plan.pk], evidence.get(plan.pk)) for plan in rows],
            "next_cursor": next_cursor}


@router.get("/projects/{project_key}/plans/{plan_id}", response=answers({200: PlanDetail}),
            summary="One rollout plan: stages, guardrails judged now, the actions open to the token, its log")
def plan_get(request: HttpRequest, project_key: str, plan_id: int = IdPath) -> Any:
    needs(request, "read")
    return _plan_detail(request, project_for(request, project_key), plan_id)


# --- writing ---------------------------------------------------------------------------------

@router.post("/projects/{project_key}/plans/{plan_id}/actions/{action}",
             response=answers({200: PlanDetail, 202: ChangeRequestBrief}, write=True),
             summary="Act on a plan: start, advance, promote, pause, resume, rollback, investigate, resolve, "
                     "discard; 202 when the step waits for approval")
def plan_act(request: HttpRequest, project_key: str, action: PlanActionName, payload: PlanActionIn,
             plan_id: int = IdPath) -> Any:
    needs_one_of(request, *ACTION_SCOPES[action])
    project = project_for(request, project_key)
    plan = first_or_404(_plans(project).filter(pk=plan_id), "rollout plan")
    transitions.RULES[action].require(request.user, plan)
    waiting_before = plan.pending_change_request_id
    plan = ACTIONS[action](plan=plan, reason=payload.reason, actor=request.user)
    if action in OPENS_REQUEST and plan.pending_change_request_id not in (None, waiting_before):
        return held(request, plan.pending_change_request)
    return _plan_detail(request, project, plan_id)


@router.post("/projects/{project_key}/flags/{flag_key}/plans", response=answers({201: PlanDetail}, write=True),
             summary="Plan a rollout of a flag in one environment (a draft: nothing changes until it starts)")
def plan_create(request: HttpRequest, payload: PlanCreateIn, project_key: str,
                flag_key: str) -> Any:
    needs(request, "write")
    project = project_for(request, project_key)
    flag: Flag = flag_for(project, flag_key)
    permissions.PLAN_ROLLOUT.require(request.user, flag)
    reason = require_reason(payload.reason, kept="in the plan's log and the audit trail", limit="plan_reason")
    environment = project.environments.filter(key=payload.environment).first()
    if environment is None:
        raise ValidationError({"environment": f"{payload.environment!r} is not an environment of this project."})
    stages = ([stage.dict() for stage in payload.stages] if payload.stages is not None
              else design.template_stages(flag))
    plan = design.plan_create(flag=flag, environment=environment, candidate=payload.candidate,
                              baseline=payload.baseline or flag.fallback_variation.key, stages=stages,
                              on_breach=payload.on_breach, reason=reason, actor=request.user,
                              assignment_unit=payload.assignment_unit.strip())
    return Status(201, _plan_detail(request, project, plan.pk))
