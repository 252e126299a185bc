"""Change-control console: proposals in governed environments, change requests and their
decisions, the approver's inbox, kill switches, incident mode, follow-ups and approval
policies. Function views; htmx requests get named partials.

Every view loads its objects through a project the user belongs to (another project's ids
answer 404) and checks the role on that project before acting; the services check again.

Over 500 lines on purpose: one module per console, like the services' packages are per noun;
each section (proposals, requests, the inbox, kill switch and incidents, follow-ups, policies)
is short, and they share the request-page helpers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from flags.forms import add_service_errors
from flags.models import Flag, Project, Targeting
from flags.permissions import has_project_permission
from flags.shortcuts import denied, flag_for, project_for, with_messages
from flags.views import targeting_card_context
from rollouts import selectors
from rollouts.change_control import (
    applying,
    approval_policy,
    approving,
    follow_ups,
    incident_mode,
    kill_switch,
    permissions,
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
    targeting = (Targeting.objects.filter(flag=flag, environment__key=environment_key)
                 .select_related("environment", "flag__fallback_variation", "updated_by").first())
    if targeting is None:
        raise Http404("No such environment.")
    return targeting


def can_propose(user: Any, project: Project, flag: Flag, targeting: Targeting) -> bool:
    """Flag owners and editors propose any change; in a governed environment operators use the
    same page to move traffic towards the fallback (the service refuses them anything riskier)."""
    if permissions.may_propose(user, flag):
        return True
    return targeting.environment.is_governed and has_project_permission(user, project, "flip_killswitch")


def _flag_url(project: Project, flag: Flag, anchor: str = "") -> str:
    url = reverse("flags:flag_detail", kwargs={"project_key": project.key, "flag_key": flag.key})
    return url + (f"#{anchor}" if anchor else "")


# --- proposing a change in a governed environment --------------------------------------------


def _propose_form(request: HttpRequest, targeting: Targeting) -> ProposeForm:
    variations = list(targeting.flag.variations.all())
    return ProposeForm(request.POST or None, targeting=targeting, variations=variations,
                       initial=ProposeForm.initial_for(targeting, variations))


@login_required
@require_http_methods(["GET", "POST"])
def targeting_propose(request: HttpRequest, project_key: str, flag_key: str, environment_key: str) -> HttpResponse:
    project = project_for(request, project_key)
    flag = flag_for(project, flag_key)
    targeting = _targeting_for(flag, environment_key)
    if not can_propose(request.user, project, flag, targeting):
        return denied(request, "Proposing changes needs the flag owner, editor or operator role in this project.")
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
        "operator_only": not permissions.may_propose(request.user, flag),
    }, status=422 if form.errors else 200)


@login_required
@require_POST
def targeting_preview(request: HttpRequest, project_key: str, flag_key: str, environment_key: str) -> HttpResponse:
    """htmx: what submitting the form as it stands would do, before it is submitted."""
    project = project_for(request, project_key)
    flag = flag_for(project, flag_key)
    targeting = _targeting_for(flag, environment_key)
    if not can_propose(request.user, project, flag, targeting):
        return denied(request, "Proposing changes needs the flag owner, editor or operator role in this project.")
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
    return render(request, "rollouts/propose.html#preview", {
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
    is_approver = has_project_permission(user, project, "approve_change")
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
        "can_apply": permissions.may_carry(user, change_request) and status == ChangeRequest.Status.APPROVED,
        "can_cancel": is_requester and status in (*ChangeRequest.OPEN, ChangeRequest.Status.CONFLICTED),
        "can_comment": is_requester or bool(permissions.participation(user, project)),
        "decision_form": DecisionForm(auto_id="id_decision_%s"),
        "comment_form": CommentForm(auto_id="id_comment_%s"),
        "schedule_form": ScheduleForm(auto_id="id_schedule_%s"),
        "rollout": plan_pages.request_evidence(change_request),
        "shortfall": approving.approval_shortfall(change_request),
    }


@login_required
@require_GET
def change_request_detail(request: HttpRequest, project_key: str, pk: int) -> HttpResponse:
    project = project_for(request, project_key)
    change_request = _change_request_for(project, pk)
    return render(request, "rollouts/change_request.html", _change_request_context(request, project, change_request))


def _change_request_action(request: HttpRequest, project_key: str, pk: int, act: Any,
                           success: str | Callable[[ChangeRequest], str],
                           form_class: type | None = None) -> HttpResponse:
    """Run one action on a request, then answer with its refreshed body (htmx) or page.
    `success` is the message, or makes it from the request as the action left it."""
    project = project_for(request, project_key)
    change_request = _change_request_for(project, pk)
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
    response = render(request, "rollouts/change_request.html#cr-body",
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


def _decide(request: HttpRequest, project_key: str, pk: int, decide: Any, success: Any, refusal: str) -> HttpResponse:
    """Approve or reject: approvers only (the service checks again, under the row lock)."""
    if not has_project_permission(request.user, project_for(request, project_key), "approve_change"):
        return denied(request, refusal)
    return _change_request_action(
        request, project_key, pk,
        lambda cr, data: decide(change_request=cr, actor=request.user, comment=data.get("comment", "")),
        success, DecisionForm)


@login_required
@require_POST
def change_request_approve(request: HttpRequest, project_key: str, pk: int) -> HttpResponse:
    return _decide(request, project_key, pk, approving.change_request_approve, _approval_message,
                   "Approving needs the approver role in this project.")


@login_required
@require_POST
def change_request_reject(request: HttpRequest, project_key: str, pk: int) -> HttpResponse:
    return _decide(request, project_key, pk, approving.change_request_reject, "Rejected: the request is closed.",
                   "Rejecting needs the approver role in this project.")


def _may_carry_out(request: HttpRequest, project_key: str, pk: int) -> bool:
    """Applying and scheduling: the flag's owner or an editor (a requester who lost the role
    may not), as the services require."""
    change_request = _change_request_for(project_for(request, project_key), pk)
    return permissions.may_carry(request.user, change_request)


@login_required
@require_POST
def change_request_comment(request: HttpRequest, project_key: str, pk: int) -> HttpResponse:
    project = project_for(request, project_key)
    if not (permissions.participation(request.user, project)
            or _change_request_for(project, pk).requester_id == request.user.pk):
        return denied(request, "Commenting needs a role that takes part in changes (editor, approver or operator).")
    return _change_request_action(
        request, project_key, pk,
        lambda cr, data: approving.change_request_comment(change_request=cr, actor=request.user, body=data["body"]),
        "Comment added.", CommentForm)


@login_required
@require_POST
def change_request_apply(request: HttpRequest, project_key: str, pk: int) -> HttpResponse:
    if not _may_carry_out(request, project_key, pk):
        return denied(request, "Applying needs the flag owner or editor role.")
    def act(cr: ChangeRequest, data: dict) -> None:
        result = applying.change_request_apply(change_request=cr, actor=request.user)
        if result.status == ChangeRequest.Status.CONFLICTED:
            summary = (result.conflict or {}).get("summary") or "Not applied: what it changes moved since it was made"
            raise ValidationError(f"{summary}. See what moved below.")

    return _change_request_action(request, project_key, pk, act, "Applied: the change is live.")


@login_required
@require_POST
def change_request_schedule(request: HttpRequest, project_key: str, pk: int) -> HttpResponse:
    if not _may_carry_out(request, project_key, pk):
        return denied(request, "Scheduling needs the flag owner or editor role.")
    return _change_request_action(
        request, project_key, pk,
        lambda cr, data: applying.change_request_schedule(change_request=cr, actor=request.user,
                                                          when=data["scheduled_for"]),
        "Scheduled: it will be applied at that time, after the same checks.", ScheduleForm)


@login_required
@require_POST
def change_request_cancel(request: HttpRequest, project_key: str, pk: int) -> HttpResponse:
    project = project_for(request, project_key)
    if _change_request_for(project, pk).requester_id != request.user.pk:
        return denied(request, "Only the requester can cancel a request.")
    return _change_request_action(
        request, project_key, pk,
        lambda cr, data: applying.change_request_cancel(change_request=cr, actor=request.user),
        "Cancelled.")


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


@login_required
@require_GET
def flag_control(request: HttpRequest, project_key: str, flag_key: str) -> HttpResponse:
    """The flag page's change-control panel (loaded by htmx): open and recent requests,
    follow-ups to acknowledge, incident mode."""
    project = project_for(request, project_key)
    flag = flag_for(project, flag_key)
    return render(request, "rollouts/flag_control.html", {
        "project": project, "flag": flag, "control": selectors.flag_control(flag),
        "plans": list(flag.rollout_plans.filter(status__in=RolloutPlan.OPEN).select_related("environment")),
        "can_plan": permissions.may_propose(request.user, flag) and flag.archived_at is None,
        "ack_form": AcknowledgeForm(), "can_acknowledge": bool(permissions.participation(request.user, project)),
    })


# --- kill switch, incident mode, follow-ups ------------------------------------------------


def _can_flip(user: Any, project: Project) -> bool:
    return has_project_permission(user, project, "flip_killswitch")


@login_required
@require_http_methods(["GET", "POST"])
def killswitch(request: HttpRequest, project_key: str, flag_key: str, environment_key: str) -> HttpResponse:
    project = project_for(request, project_key)
    flag = flag_for(project, flag_key)
    targeting = _targeting_for(flag, environment_key)
    if not _can_flip(request.user, project):
        return denied(request, "Kill switches are for operators of this project.")
    form = ReasonForm(request.POST or None, auto_id=f"id_kill_{environment_key}_%s")
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                targeting = kill_switch.killswitch_flip(targeting=targeting, reason=form.cleaned_data["reason"],
                                                     actor=request.user)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Kill switch flipped: {flag.key} serves its fallback "
                                          f"{flag.fallback_variation.key} to everyone in {targeting.environment.name}. "
                                          "The owner and approvers were notified; a follow-up review is open.")
                if not request.htmx:
                    return redirect(_flag_url(project, flag, f"env-{environment_key}"))
                targeting = _targeting_for(flag, environment_key)
                response = render(request, "flags/flag_detail.html#targeting-card",
                                  targeting_card_context(request, project, flag, targeting))
                response["HX-Trigger"] = "flag-control-changed"
                return with_messages(request, response)
        status = 422
    template = "rollouts/killswitch.html#killswitch-form" if request.htmx else "rollouts/killswitch.html"
    response = render(request, template, {"project": project, "flag": flag, "targeting": targeting, "form": form},
                      status=status)
    if request.htmx and request.method == "POST":  # errors go back beside the field, not over the card
        response["HX-Retarget"] = f"#killswitch-{targeting.environment.key}"
        response["HX-Reswap"] = "innerHTML"
    return response


@login_required
@require_http_methods(["GET", "POST"])
def incidents(request: HttpRequest, project_key: str) -> HttpResponse:
    project = project_for(request, project_key)
    can_flip = _can_flip(request.user, project)
    governed = project.environments.filter(is_governed=True).first()  # the likely target
    form = IncidentForm(request.POST or None, project=project, initial={"environment": governed})
    if request.method == "POST":
        if not can_flip:
            return denied(request, "Incident mode is for operators of this project.")
        if form.is_valid():
            try:
                incident = incident_mode.incident_start(environment=form.cleaned_data["environment"],
                                                   surfaces=form.cleaned_data["surfaces"],
                                                   reason=form.cleaned_data["reason"], actor=request.user)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Incident mode is on in {incident.environment.name}: "
                                          f"{len(incident.affected)} flag(s) now serve their fallbacks.")
                return redirect("rollouts:incidents", project_key=project.key)
    return render(request, "rollouts/incidents.html", {
        "project": project, "incidents": selectors.incidents_of(project), "form": form, "can_flip": can_flip,
        "lift_form": ReasonForm(auto_id="id_lift_%s"),
    }, status=422 if form.errors else 200)


@login_required
@require_POST
def incident_lift(request: HttpRequest, project_key: str, pk: int) -> HttpResponse:
    project = project_for(request, project_key)
    incident = get_object_or_404(Incident, project=project, pk=pk)
    if not _can_flip(request.user, project):
        return denied(request, "Lifting incident mode is for operators of this project.")
    form = ReasonForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(form.errors["reason"]) if request.POST.get("reason", "").strip()
                       else "Say why incident mode can be lifted: the reason stays in the audit trail.")
    else:
        try:
            incident = incident_mode.incident_lift(incident=incident, reason=form.cleaned_data["reason"],
                                              actor=request.user)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            text = f"Incident mode lifted in {incident.environment.name}: {len(incident.restored)} flag(s) back on."
            if incident.left:
                text += f" Left as they are, because someone changed them since: {', '.join(incident.left)}."
            messages.success(request, text)
    url = reverse("rollouts:incidents", kwargs={"project_key": project.key})
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@login_required
@require_POST
def follow_up_acknowledge(request: HttpRequest, project_key: str, pk: int) -> HttpResponse:
    project = project_for(request, project_key)
    follow_up = get_object_or_404(FollowUp.objects.select_related("environment", "flag"), project=project, pk=pk)
    if not permissions.participation(request.user, project):
        return denied(request, "Acknowledging needs the editor, approver or operator role in this project.")
    form = AcknowledgeForm(request.POST, auto_id=f"id_ack_{pk}_%s")
    status = 200
    if form.is_valid():
        try:
            follow_up = follow_ups.follow_up_acknowledge(follow_up=follow_up, note=form.cleaned_data["note"],
                                                       actor=request.user)
        except ValidationError as exc:
            add_service_errors(form, exc)
            status = 422
        else:
            messages.success(request, "Acknowledged.")
    else:
        status = 422
    if not request.htmx:
        if form.errors:
            messages.error(request, " ".join(" ".join(e) for e in form.errors.values()))
        if request.POST.get("next_page") != "inbox" and follow_up.flag is not None:
            return redirect(_flag_url(project, follow_up.flag))
        return redirect("rollouts:inbox")
    response = render(request, "rollouts/flag_control.html#follow-up", {
        "project": project, "item": follow_up, "ack_form": form, "can_acknowledge": True,
    }, status=status)
    return with_messages(request, response)


# --- approval policy -------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def approval_policies(request: HttpRequest, project_key: str) -> HttpResponse:
    project = project_for(request, project_key)
    can_manage = has_project_permission(request.user, project, "manage_approval_policy")
    environments = list(project.environments.all())
    posted_key = request.POST.get("environment", "") if request.method == "POST" else ""
    if request.method == "POST" and not can_manage:
        return denied(request, "Approval policies are changed by the project's admins.")
    rows, status = [], 200
    for environment in environments:
        policy = approval_policy.policy_for(environment)
        initial = {name: getattr(policy, name) for name in approval_policy.POLICY_LIMITS}
        if environment.key == posted_key:
            form = PolicyForm(request.POST, initial=initial, prefix=environment.key)
            if form.is_valid():
                try:
                    approval_policy.approval_policy_update(environment=environment, actor=request.user, **form.cleaned_data)
                except ValidationError as exc:
                    add_service_errors(form, exc)
                else:
                    messages.success(request, f"Approval policy of {environment.name} saved.")
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

