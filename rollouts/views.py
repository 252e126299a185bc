"""Change-control console: proposals in governed environments, change requests and their
decisions, the approver's inbox, kill switches, incident mode, follow-ups and approval
policies. Function views; htmx requests get fragments (`_<name>.html`).

Every view loads its objects through a project the user belongs to (another project's ids
answer 404) and checks the role on that project before acting; the services check again.

Over 500 lines on purpose: one module per console, like the services' packages are per noun;
each section (proposals, requests, the inbox, kill switch and incidents, follow-ups, policies)
is short, and they share the request-page helpers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET
from django_htmx.http import HttpResponseClientRedirect

from flags import permissions
from flags.forms import add_service_errors
from flags.fragments import targeting_card_context
from flags.models import Flag, Project, Targeting
from flags.shortcuts import REFUSED, first_or_404, flag_for, project_page, refused, report, with_messages
from rollouts import selectors
from rollouts.change_control import (
    applying,
    approval_policy,
    approving,
    follow_ups,
    incident_mode,
    kill_switch,
    submitting,
    wording,
)
from rollouts.forms import (
    AcknowledgeForm,
    CommentForm,
    DecisionForm,
    IncidentForm,
    PolicyForm,
    ProposeForm,
    ReasonForm,
    ScheduleForm,
)
from rollouts.models import ChangeRequest, FollowUp, Incident, RolloutPlan
from rollouts.plans import pages as plan_pages


def _targeting_for(flag: Flag, environment_key: str) -> Targeting:
    return first_or_404(Targeting.objects.filter(flag=flag, environment__key=environment_key)
                        .select_related("environment", "flag__fallback_variation", "updated_by"), "environment")


def _flag_url(project: Project, flag: Flag, anchor: str = "") -> str:
    url = reverse("flags:flag_detail", kwargs={"project_key": project.key, "flag_key": flag.key})
    return url + (f"#{anchor}" if anchor else "")


# --- proposing a change in a governed environment --------------------------------------------


def _propose_form(request: HttpRequest, targeting: Targeting) -> ProposeForm:
    variations = list(targeting.flag.variations.all())
    return ProposeForm(request.POST or None, targeting=targeting, variations=variations,
                       initial=ProposeForm.initial_for(targeting, variations))


@project_page("GET", "POST")
def targeting_propose(request: HttpRequest, project: Project, flag_key: str, environment_key: str) -> HttpResponse:
    flag = flag_for(project, flag_key)
    targeting = _targeting_for(flag, environment_key)
    if refusal := refused(request, permissions.PROPOSE_CHANGE, flag, targeting.environment):
        return refusal
    form = _propose_form(request, targeting)
    if request.method == "POST" and form.is_valid():
        try:
            result = submitting.targeting_change_submit(
                targeting=targeting, changes=form.changes(), reason=form.cleaned_data["reason"],
                expected_version=form.cleaned_data["version"], actor=request.user)
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            if isinstance(result, ChangeRequest):
                messages.success(request, f"Change request CR-{result.pk} submitted: it needs "
                                          f"{result.required_approvals} approval(s). Approvers have been notified.")
                return redirect("rollouts:change_request", project_key=project.key, pk=result.pk)
            messages.success(request, f"Applied at once in {targeting.environment.name}: this change raises no risk.")
            return redirect(_flag_url(project, flag, f"env-{targeting.environment.key}"))
    return render(request, "rollouts/propose.html", {
        "project": project, "flag": flag, "targeting": targeting, "form": form,
        "segments": list(project.segments.values_list("key", flat=True)),
        "policy": approval_policy.policy_for(targeting.environment),
        "operator_only": not permissions.steers(request.user, flag),
    }, status=422 if form.errors else 200)


@project_page("POST")
def targeting_preview(request: HttpRequest, project: Project, flag_key: str, environment_key: str) -> HttpResponse:
    """htmx: what submitting the form as it stands would do, before it is submitted."""
    flag = flag_for(project, flag_key)
    targeting = _targeting_for(flag, environment_key)
    if refusal := refused(request, permissions.PROPOSE_CHANGE, flag, targeting.environment):
        return refusal
    form = _propose_form(request, targeting)
    form.fields["reason"].required = False  # the preview does not need the reason yet
    preview, problems = None, []
    if form.is_valid():
        try:
            preview = submitting.preview_targeting_change(targeting=targeting, changes=form.changes())
        except ValidationError as exc:
            problems = exc.messages
    else:
        problems = [f"{name.replace('_', ' ') if name != '__all__' else 'form'}: {' '.join(errors)}"
                    for name, errors in form.errors.items()]
    needs = preview is not None and not preview.applies_now
    return render(request, "rollouts/_preview.html", {
        "preview": preview, "problems": problems, "targeting": targeting,
        # who could approve it: the approvers other than the person proposing
        "eligible_approvers": permissions.approvers_other_than(project, request.user.pk).count() if needs else 0,
    })


# --- change requests -----------------------------------------------------------------------


def _change_request_for(project: Project, pk: int) -> ChangeRequest:
    try:
        return selectors.change_request_page(project, pk)
    except ChangeRequest.DoesNotExist as exc:
        raise Http404("No such change request.") from exc


def _change_request_context(request: HttpRequest, project: Project, change_request: ChangeRequest) -> dict[str, Any]:
    user = request.user
    is_requester = change_request.requester_id == user.pk
    is_approver = permissions.APPROVE.allows(user, change_request)
    status = change_request.status
    approvals = list(change_request.approvals.all())
    decided = any(a.approver_id == user.pk and a.diff_hash == change_request.diff_hash for a in approvals)
    conflict_lines = wording.describe_conflict(change_request)
    return {
        "project": project,
        "cr": change_request,
        "lines": wording.describe_request(change_request),
        "conflict_lines": conflict_lines,
        "approvals": approvals,
        "valid_approvals": approving.valid_approvals(change_request),
        "is_requester": is_requester,
        "is_approver": is_approver,
        "can_decide": is_approver and status in (ChangeRequest.Status.PENDING, ChangeRequest.Status.APPROVED),
        "already_decided": decided,
        "can_apply": permissions.APPLY.allows(user, change_request) and status == ChangeRequest.Status.APPROVED,
        "can_cancel": is_requester and status in (*ChangeRequest.OPEN, ChangeRequest.Status.CONFLICTED),
        "can_comment": permissions.COMMENT.allows(user, change_request),
        "decision_form": DecisionForm(auto_id="id_decision_%s"),
        "comment_form": CommentForm(auto_id="id_comment_%s"),
        "schedule_form": ScheduleForm(auto_id="id_schedule_%s"),
        "rollout": plan_pages.request_evidence(change_request),
        "shortfall": approving.approval_shortfall(change_request),
    }


@project_page("GET")
def change_request_detail(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    change_request = _change_request_for(project, pk)
    return render(request, "rollouts/change_request.html", _change_request_context(request, project, change_request))


def _change_request_action(request: HttpRequest, project: Project, pk: int, rule: permissions.Rule, act: Any,
                           success: str | Callable[[ChangeRequest], str],
                           form_class: type | None = None) -> HttpResponse:
    """Run one action on a request if `rule` allows the person (the service asks again, under
    the row lock), then answer with its refreshed body (htmx) or page. `success` is the
    message, or makes it from the request as the action left it."""
    change_request = _change_request_for(project, pk)
    if refusal := refused(request, rule, change_request):
        return refusal
    status = 200
    form = form_class(request.POST, auto_id="id_x_%s") if form_class else None
    if form is not None and not form.is_valid():
        messages.error(request, " ".join(" ".join(errors) for errors in form.errors.values()))
        status = 422
    else:
        try:
            act(change_request, form.cleaned_data if form is not None else {})
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            status = 422
        else:
            messages.success(request, success(_change_request_for(project, pk)) if callable(success) else success)
    if not request.htmx:
        return redirect("rollouts:change_request", project_key=project.key, pk=pk)
    change_request = _change_request_for(project, pk)
    response = render(request, "rollouts/_cr_body.html",
                      _change_request_context(request, project, change_request), status=status)
    # A decision changes how many requests wait for this person: refresh the nav's count too.
    response.write(render_to_string("rollouts/_nav_approvals.html", {"oob": True}, request=request))
    return with_messages(request, response)


def _approval_message(change_request: ChangeRequest) -> str:
    """Say where the request stands, not just "Approved." while it still waits for others."""
    count, required = approving.valid_approvals(change_request), change_request.required_approvals
    if change_request.status == ChangeRequest.Status.APPROVED:
        return f"Approved: {count} of {required} approvals. The requester or an editor can apply it now."
    return f"Your approval is recorded ({count} of {required}): it still needs {required - count} more."


def _decide(request: HttpRequest, project: Project, pk: int, decide: Any, success: Any,
            rule: permissions.Rule) -> HttpResponse:
    """Approve or reject: approvers only."""
    return _change_request_action(
        request, project, pk, rule,
        lambda cr, data: decide(change_request=cr, actor=request.user, comment=data.get("comment", "")),
        success, DecisionForm)


@project_page("POST")
def change_request_approve(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    return _decide(request, project, pk, approving.change_request_approve, _approval_message,
                   permissions.APPROVE)


@project_page("POST")
def change_request_reject(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    return _decide(request, project, pk, approving.change_request_reject, "Rejected: the request is closed.",
                   permissions.REJECT)


@project_page("POST")
def change_request_comment(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    return _change_request_action(
        request, project, pk, permissions.COMMENT,
        lambda cr, data: approving.change_request_comment(change_request=cr, actor=request.user, body=data["body"]),
        "Comment added.", CommentForm)


@project_page("POST")
def change_request_apply(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    def act(cr: ChangeRequest, data: dict) -> None:
        result = applying.change_request_apply(change_request=cr, actor=request.user)
        if result.status == ChangeRequest.Status.CONFLICTED:
            summary = (result.conflict or {}).get("summary") or "Not applied: what it changes moved since it was made"
            raise ValidationError(f"{summary}. See what moved below.")

    return _change_request_action(request, project, pk, permissions.APPLY, act, "Applied: the change is live.")


@project_page("POST")
def change_request_schedule(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    return _change_request_action(
        request, project, pk, permissions.SCHEDULE,
        lambda cr, data: applying.change_request_schedule(change_request=cr, actor=request.user,
                                                          when=data["scheduled_for"]),
        "Scheduled: it will be applied at that time, after the same checks.", ScheduleForm)


@project_page("POST")
def change_request_cancel(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    return _change_request_action(
        request, project, pk, permissions.CANCEL_REQUEST,
        lambda cr, data: applying.change_request_cancel(change_request=cr, actor=request.user),
        "Cancelled.")


@login_required
@require_GET
def nav_approvals(request: HttpRequest) -> HttpResponse:
    """The navigation's "Change requests" link alone: the live console re-fetches it when a
    change request of one of the person's projects moves (base.html)."""
    return render(request, "rollouts/_nav_approvals.html")


@login_required
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    waiting = list(selectors.waiting_for(request.user)[:100])
    mine = selectors.requested_by(request.user)
    recent = selectors.recent_in_projects(request.user)
    return render(request, "rollouts/inbox.html", {
        "waiting": waiting, "mine": mine, "recent": recent,
        "follow_ups": selectors.open_follow_ups(request.user),
    })


@project_page("GET")
def flag_control(request: HttpRequest, project: Project, flag_key: str) -> HttpResponse:
    """The flag page's change-control panel (loaded by htmx): open and recent requests,
    follow-ups to acknowledge, incident mode."""
    flag = flag_for(project, flag_key)
    return render(request, "rollouts/_flag_control.html", {
        "project": project, "flag": flag, "control": selectors.flag_control(flag),
        "plans": list(flag.rollout_plans.filter(status__in=RolloutPlan.OPEN).select_related("environment")),
        "can_plan": permissions.PLAN_ROLLOUT.allows(request.user, flag) and flag.archived_at is None,
        "ack_form": AcknowledgeForm(), "can_acknowledge": permissions.ACKNOWLEDGE.allows(request.user, project),
    })


# --- kill switch, incident mode, follow-ups ------------------------------------------------


@project_page("GET", "POST")
def killswitch(request: HttpRequest, project: Project, flag_key: str, environment_key: str) -> HttpResponse:
    flag = flag_for(project, flag_key)
    targeting = _targeting_for(flag, environment_key)
    if refusal := refused(request, permissions.FLIP_KILL_SWITCH, project):
        return refusal
    form = ReasonForm(request.POST or None, auto_id=f"id_kill_{environment_key}_%s")
    status = 200
    if request.method == "POST":
        if form.is_valid():
            flipped = report(request, lambda: kill_switch.killswitch_flip(
                targeting=targeting, reason=form.cleaned_data["reason"], actor=request.user),
                lambda flipped: f"Kill switch flipped: {flag.key} serves its fallback {flag.fallback_variation.key} "
                                f"to everyone in {flipped.environment.name}. The owner and approvers were notified; "
                                "a follow-up review is open.", form)
            if flipped is not REFUSED:
                if not request.htmx:
                    return redirect(_flag_url(project, flag, f"env-{environment_key}"))
                targeting = _targeting_for(flag, environment_key)
                response = render(request, "flags/_targeting_card.html",
                                  targeting_card_context(request, project, flag, targeting))
                response["HX-Trigger"] = "flag-control-changed"
                return with_messages(request, response)
        status = 422
    template = "rollouts/_killswitch_form.html" if request.htmx else "rollouts/killswitch.html"
    response = render(request, template, {"project": project, "flag": flag, "targeting": targeting, "form": form},
                      status=status)
    if request.htmx and request.method == "POST":  # errors go back beside the field, not over the card
        response["HX-Retarget"] = f"#killswitch-{targeting.environment.key}"
        response["HX-Reswap"] = "innerHTML"
    return response


@project_page("GET", "POST")
def incidents(request: HttpRequest, project: Project) -> HttpResponse:
    can_flip = permissions.START_INCIDENT.allows(request.user, project)
    governed = project.environments.filter(is_governed=True).first()  # the likely target
    form = IncidentForm(request.POST or None, project=project, initial={"environment": governed})
    if request.method == "POST":
        if refusal := refused(request, permissions.START_INCIDENT, project):
            return refusal
        if form.is_valid():
            if report(request, lambda: incident_mode.incident_start(
                    environment=form.cleaned_data["environment"], surfaces=form.cleaned_data["surfaces"],
                    reason=form.cleaned_data["reason"], actor=request.user),
                    lambda incident: f"Incident mode is on in {incident.environment.name}: "
                                     f"{len(incident.affected)} flag(s) now serve their fallbacks.", form) is not REFUSED:
                return redirect("rollouts:incidents", project_key=project.key)
    return render(request, "rollouts/incidents.html", {
        "project": project, "incidents": selectors.incidents_of(project), "form": form, "can_flip": can_flip,
        "lift_form": ReasonForm(auto_id="id_lift_%s"),
    }, status=422 if form.errors else 200)


def _lifted(incident: Incident) -> str:
    text = f"Incident mode lifted in {incident.environment.name}: {len(incident.restored)} flag(s) back on."
    if incident.left:
        text += f" Left as they are, because someone changed them since: {', '.join(incident.left)}."
    return text


@project_page("POST")
def incident_lift(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    incident = get_object_or_404(Incident, project=project, pk=pk)
    if refusal := refused(request, permissions.LIFT_INCIDENT, project):
        return refusal
    form = ReasonForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(form.errors["reason"]) if request.POST.get("reason", "").strip()
                       else "Say why incident mode can be lifted: the reason stays in the audit trail.")
    else:
        report(request, lambda: incident_mode.incident_lift(incident=incident, reason=form.cleaned_data["reason"],
                                                            actor=request.user), _lifted)
    url = reverse("rollouts:incidents", kwargs={"project_key": project.key})
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@project_page("POST")
def follow_up_acknowledge(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    follow_up = get_object_or_404(FollowUp.objects.select_related("environment", "flag"), project=project, pk=pk)
    if refusal := refused(request, permissions.ACKNOWLEDGE, project):
        return refusal
    form = AcknowledgeForm(request.POST, auto_id=f"id_ack_{pk}_%s")
    status = 200
    if form.is_valid():
        acknowledged = report(request, lambda: follow_ups.follow_up_acknowledge(
            follow_up=follow_up, note=form.cleaned_data["note"], actor=request.user), "Acknowledged.", form)
        if acknowledged is REFUSED:
            status = 422
        else:
            follow_up = acknowledged
    else:
        status = 422
    if not request.htmx:
        if form.errors:
            messages.error(request, " ".join(" ".join(e) for e in form.errors.values()))
        if request.POST.get("next_page") != "inbox" and follow_up.flag is not None:
            return redirect(_flag_url(project, follow_up.flag))
        return redirect("rollouts:inbox")
    response = render(request, "rollouts/_follow_up.html", {
        "project": project, "item": follow_up, "ack_form": form, "can_acknowledge": True,
    }, status=status)
    return with_messages(request, response)


# --- approval policy -------------------------------------------------------------------------


@project_page("GET", "POST")
def approval_policies(request: HttpRequest, project: Project) -> HttpResponse:
    can_manage = permissions.CHANGE_APPROVAL_POLICIES.allows(request.user, project)
    environments = list(project.environments.all())
    posted_key = request.POST.get("environment", "") if request.method == "POST" else ""
    if request.method == "POST" and (refusal := refused(request, permissions.CHANGE_APPROVAL_POLICIES, project)):
        return refusal
    rows, status = [], 200
    for environment in environments:
        policy = approval_policy.policy_for(environment)
        initial = {name: getattr(policy, name) for name in approval_policy.POLICY_LIMITS}
        if environment.key == posted_key:
            form = PolicyForm(request.POST, initial=initial, prefix=environment.key)
            if form.is_valid():
                if report(request, functools.partial(approval_policy.approval_policy_update,
                                                     environment=environment, actor=request.user, **form.cleaned_data),
                        f"Approval policy of {environment.name} saved.", form) is not REFUSED:
                    return redirect("rollouts:approval_policies", project_key=project.key)
            status = 422
        else:
            form = PolicyForm(initial=initial, prefix=environment.key)
        rows.append({"environment": environment, "form": form, "policy": policy})
    if request.method == "POST" and not any(r["environment"].key == posted_key for r in rows):
        messages.error(request, "Choose one of this project's environments.")
        status = 422
    return render(request, "rollouts/approval_policies.html", {
        "project": project, "rows": rows, "can_manage": can_manage,
    }, status=status)

