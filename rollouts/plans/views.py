"""Rollout plans in the console: the board, the plan page with its evidence and decision
log, plan creation from the seed template, and the plan actions (htmx, with a reason).

Every view loads the plan through a project the user belongs to (another project's plans
answer 404) and checks the role for the action before calling the service, which checks
again under the plan's row lock.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from flags import permissions
from flags.forms import add_service_errors
from flags.models import Environment, Flag, Project
from flags.shortcuts import first_or_404, flag_for, project_page, refused, with_messages
from rollouts.forms import GuardrailFormSet, PlanForm, PlanReasonForm, StageFormSet
from rollouts.models import ReleaseDecision, RolloutPlan
from rollouts.plans import design, power, transitions
from rollouts.plans import pages as plan_pages
from telemetry.models import Metric

Action = ReleaseDecision.Action
ACTIONS: dict[str, tuple[Callable[..., RolloutPlan], str]] = {
    Action.START: (transitions.plan_start, "Started: stage 1 is live, or waits for approval."),
    Action.ADVANCE: (transitions.plan_advance, "Advanced."),
    Action.PROMOTE: (transitions.plan_promote, "Promoted."),
    Action.PAUSE: (transitions.plan_pause, "Paused: traffic stays as it is, expansion has stopped."),
    Action.RESUME: (transitions.plan_resume, "Resumed: the stage's bake time starts over."),
    Action.ROLLBACK: (transitions.plan_rollback, "Rolled back: everyone gets the baseline now."),
    Action.INVESTIGATE: (transitions.plan_investigate, "Marked for investigation."),
    Action.RESOLVE: (transitions.plan_resolve, "Investigation closed."),
    Action.DISCARD: (transitions.plan_discard, "Draft discarded."),
}
STAGE_ERROR = re.compile(r"^stages\[(\d+)\]\.(\w+)(?:\[(\d+)\])?$")


def _plan_for(project: Project, pk: int) -> RolloutPlan:
    return first_or_404(RolloutPlan.objects.filter(project=project, pk=pk)
                        .select_related("flag__owner_user", "flag__fallback_variation", "environment", "project",
                                        "pending_change_request", "created_by"), "rollout plan")


@project_page("GET")
def plan_board(request: HttpRequest, project: Project) -> HttpResponse:
    chosen = request.GET.get("flag", "")
    if chosen and Flag.objects.filter(project=project, key=chosen).exists():
        return redirect("rollouts:plan_create", project_key=project.key, flag_key=chosen)
    open_rows, closed_rows = plan_pages.board(project)
    return render(request, "rollouts/plan_board.html", {
        "project": project, "open_rows": open_rows, "closed_rows": closed_rows,
        "plannable": _plannable(request.user, project),
    })


def _plannable(user: Any, project: Project) -> list[Flag]:
    """Flags the person may plan a rollout of: all of them for editors, their own otherwise."""
    flags = Flag.objects.filter(project=project, archived_at__isnull=True).select_related("project").order_by("key")
    if permissions.has_project_permission(user, project, "propose_change"):
        return list(flags)
    return [flag for flag in flags.filter(owner_user=user) if permissions.PLAN_ROLLOUT.allows(user, flag)]


def _page_context(request: HttpRequest, project: Project, plan: RolloutPlan, form: PlanReasonForm | None = None,
                  **extra: Any) -> dict[str, Any]:
    return {"project": project, **plan_pages.plan_page(plan, request.user), "form": form or PlanReasonForm(), **extra}


@project_page("GET")
def plan_detail(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    plan = _plan_for(project, pk)
    return render(request, "rollouts/plan.html", _page_context(request, project, plan))


@project_page("POST")
def plan_action(request: HttpRequest, project: Project, pk: int, action: str) -> HttpResponse:
    """htmx: one plan action with its reason; the plan's body comes back with the result."""
    plan = _plan_for(project, pk)
    if action not in ACTIONS:
        raise Http404("No such action.")
    if refusal := refused(request, transitions.RULES[action], plan):
        return refusal
    form = PlanReasonForm(request.POST)
    problem = ""
    if form.is_valid():
        service, done = ACTIONS[action]
        try:
            plan = service(plan=plan, reason=form.cleaned_data["reason"], actor=request.user)
        except ValidationError as exc:
            problem = " ".join(exc.messages)
        else:
            messages.success(request, _outcome(plan, action, done))
            if not request.htmx:
                return redirect("rollouts:plan_detail", project_key=project.key, pk=plan.pk)
            plan = _plan_for(project, plan.pk)
            form = PlanReasonForm()
    status = 422 if problem or form.errors else 200
    if not request.htmx:
        if problem:
            messages.error(request, problem)
        return render(request, "rollouts/plan.html", _page_context(request, project, plan, form,
                                                                   action_problem=problem), status=status)
    return with_messages(request, render(
        request, "rollouts/_plan_body.html",
        _page_context(request, project, plan, form, action_problem=problem, failed_action=action), status=status))


def _outcome(plan: RolloutPlan, action: str, done: str) -> str:
    if plan.pending_change_request_id and action in (Action.START, Action.ADVANCE, Action.PROMOTE):
        return (f"CR-{plan.pending_change_request_id} opened: the stage change waits for approval. "
                "Approvers have been notified; the plan moves when it is applied.")
    if action in (Action.ADVANCE, Action.START) and plan.stage_index >= 0:
        return f"Stage {plan.stage_index + 1} is live: {plan_pages.audience_text(design.plan_stages(plan)[plan.stage_index])}."
    if action == Action.PROMOTE and plan.status == RolloutPlan.Status.COMPLETED:
        return f"Promoted: {plan.candidate} is the default for everyone in {plan.environment.name}; the plan is complete."
    return done


# --- creation ---------------------------------------------------------------------------------


def _creation_forms(request: HttpRequest, project: Project, flag: Flag) -> tuple[PlanForm, Any, Any]:
    environments = list(project.environments.all())
    variations = list(flag.variations.values_list("key", flat=True))
    segments = list(project.segments.order_by("key").values_list("key", flat=True))
    metrics = list(Metric.objects.filter(project=project).order_by("key").values_list("key", "name", "kind"))
    metric_choices = [(key, f"{name} ({key})") for key, name, _ in metrics]
    data = request.POST if request.method == "POST" else None
    candidate = next((key for key in reversed(variations) if key != flag.fallback_variation.key), "")
    environment = request.GET.get("environment") or next((e.key for e in environments if e.is_governed), "")
    form = PlanForm(data, environments=environments, variations=variations,
                    initial={"environment": environment, "baseline": flag.fallback_variation.key,
                             "candidate": candidate, "on_breach": "step_back"})
    template = design.template_stages(flag)
    stage_initial = [{**stage, "percentage": stage["percentage"] / 1000} for stage in template]
    guardrail_initial = template[0]["guardrails"] if template else []
    stages = StageFormSet(data, prefix="stages", initial=None if data else stage_initial,
                          form_kwargs={"segments": segments})
    guardrails = GuardrailFormSet(data, prefix="guardrails", initial=None if data else guardrail_initial,
                                  form_kwargs={"metrics": metric_choices,
                                               "metric_kinds": {key: kind for key, _, kind in metrics}})
    return form, stages, guardrails


def _attach_plan_errors(exc: ValidationError, form: PlanForm, stages: list[Any], guardrails: list[Any]) -> None:
    """Service errors beside the field they name: stages[i].field on that stage's row,
    stages[i].guardrails[j] on guardrail row j (every stage shares the guardrails)."""
    rest: dict[str, list[str]] = {}
    for key, errors in getattr(exc, "message_dict", {"__all__": exc.messages}).items():
        match = STAGE_ERROR.match(key)
        if match and match.group(2) == "guardrails" and match.group(3) is not None:
            row = guardrails[int(match.group(3))] if int(match.group(3)) < len(guardrails) else None
            if row is not None and not row.errors:
                for problem in "; ".join(errors).split("; "):
                    name, _, text = problem.partition(": ")
                    # "threshold: …" beside the threshold, the rest above the row
                    row.add_error(name if name in row.fields and text else None, text or problem)
            continue
        if match and int(match.group(1)) < len(stages):
            row = stages[int(match.group(1))]
            row.add_error(match.group(2) if match.group(2) in row.fields else None, errors)
            continue
        rest[key] = errors
    if rest:
        add_service_errors(form, ValidationError(rest))


def _row_values(row: Any, needed: tuple[str, ...]) -> dict[str, Any] | None:
    """A formset row's values as the page shows them: parsed from the post, the initial ones on
    a GET; None for a blank row or one that does not parse (its errors are shown beside it)."""
    if row.is_bound:
        values = row.cleaned_data if row.is_valid() else {}
    else:
        values = row.initial
    return values if all(values.get(name) is not None for name in needed) else None


def _power(project: Project, flag: Flag, form: PlanForm, stages: Any,
           guardrails: Any) -> tuple[Environment | None, list[power.StageEstimate | None]]:
    """How long each stage needs for each guardrail, at the chosen environment's traffic of the
    last 7 days (rollouts/plans/power.py): computed on a GET and on a re-render after a post with
    errors, in a fixed number of queries however many stages there are."""
    environment = project.environments.filter(key=form["environment"].value() or "").first()
    stage_values = [_row_values(row, ("name", "percentage")) for row in stages.forms]
    guardrail_values = [values for row in guardrails.forms
                        if (values := _row_values(row, ("metric", "kind", "threshold")))]
    if environment is None:
        return None, [None for _ in stage_values]
    return environment, power.plan_form_estimates(
        flag_id=flag.pk, environment_id=environment.pk, guardrails=guardrail_values,
        stages=[{**values, "percentage": float(values["percentage"])} if values else None for values in stage_values],
        metric_kinds=guardrails.form_kwargs.get("metric_kinds", {}))


@project_page("GET", "POST")
def plan_create(request: HttpRequest, project: Project, flag_key: str) -> HttpResponse:
    flag = flag_for(project, flag_key)
    if refusal := refused(request, permissions.PLAN_ROLLOUT, flag):
        return refusal
    form, stages, guardrails = _creation_forms(request, project, flag)
    if request.method == "POST" and form.is_valid() & stages.is_valid() & guardrails.is_valid():
        stage_rows = [f for f in stages.forms if f.cleaned_data]
        guardrail_rows = [f for f in guardrails.forms if f.cleaned_data]
        shared = [row.guardrail() for row in guardrail_rows]
        try:
            plan = design.plan_create(
                flag=flag, environment=project.environments.get(key=form.cleaned_data["environment"]),
                baseline=form.cleaned_data["baseline"], candidate=form.cleaned_data["candidate"],
                stages=[{**row.stage(), "guardrails": [dict(g) for g in shared]} for row in stage_rows],
                on_breach=form.cleaned_data["on_breach"], reason=form.cleaned_data["reason"], actor=request.user,
                assignment_unit=form.cleaned_data["assignment_unit"].strip())
        except ValidationError as exc:
            _attach_plan_errors(exc, form, stage_rows, guardrail_rows)
        else:
            messages.success(request, "Draft plan saved. Check the stages, then press Start: nothing is served "
                                      "differently until you do.")
            return redirect("rollouts:plan_detail", project_key=project.key, pk=plan.pk)
    invalid = request.method == "POST"
    environment, estimates = _power(project, flag, form, stages, guardrails)
    return render(request, "rollouts/plan_create.html", {
        "project": project, "flag": flag, "form": form, "stages": stages, "guardrails": guardrails,
        "stage_rows": list(zip(stages.forms, estimates, strict=True)), "power_environment": environment,
        "open_plans": RolloutPlan.objects.filter(flag=flag, status__in=RolloutPlan.OPEN).select_related("environment"),
    }, status=422 if invalid else 200)
