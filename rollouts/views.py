"""Change-control console: change requests and their decisions, the approver's inbox and the
navigation's count, and approval policies. Function views; htmx requests get fragments
(`_<name>.html`). Proposals live in propose_views.py; the kill switch, incident mode and
follow-ups in incident_views.py.

Every view loads its objects through a project the user belongs to (another project's ids
answer 404) and checks the role on that project before acting; the services check again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET

from flags import permissions
from flags.forms import add_service_errors
from flags.models import Project
from flags.shortcuts import REFUSED, project_page, refused, report, with_messages
from rollouts import selectors
from rollouts.change_control import applying, approval_policy, approving, wording
from rollouts.diff import as_json
from rollouts.forms import CommentForm, DecisionForm, PolicyForm, ScheduleForm
from rollouts.models import ChangeRequest
from rollouts.plans import pages as plan_pages

# --- change requests -----------------------------------------------------------------------


def _change_request_for(project: Project, pk: int) -> ChangeRequest:
    try:
        return selectors.change_request_page(project, pk)
    except ChangeRequest.DoesNotExist as exc:
        raise Http404("No such change request.") from exc


FORM_IDS = {"decision_form": "id_decision_%s", "comment_form": "id_comment_%s", "schedule_form": "id_schedule_%s"}


def _change_request_context(request: HttpRequest, project: Project, change_request: ChangeRequest,
                            forms: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the page shows. `forms`: bound forms that were refused, shown with their
    errors beside their fields in place of empty ones."""
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
        "review": selectors.change_request_review(change_request),
        "base_json": as_json(change_request.base_state),
        "proposed_json": as_json(change_request.proposed),
        "conflict_lines": conflict_lines,
        "approvals": approvals,
        "discussion": selectors.discussion(change_request),
        "valid_approvals": approving.valid_approvals(change_request),
        "is_requester": is_requester,
        "is_approver": is_approver,
        "can_decide": is_approver and status in (ChangeRequest.Status.PENDING, ChangeRequest.Status.APPROVED),
        "already_decided": decided,
        "can_apply": permissions.APPLY.allows(user, change_request) and status == ChangeRequest.Status.APPROVED,
        "can_cancel": is_requester and status in (*ChangeRequest.OPEN, ChangeRequest.Status.CONFLICTED),
        "can_comment": permissions.COMMENT.allows(user, change_request),
        "decision_form": DecisionForm(auto_id=FORM_IDS["decision_form"]),
        "comment_form": CommentForm(auto_id=FORM_IDS["comment_form"]),
        "schedule_form": ScheduleForm(auto_id=FORM_IDS["schedule_form"]),
        "rollout": plan_pages.request_evidence(change_request),
        "shortfall": approving.approval_shortfall(change_request),
        **(forms or {}),
    }


@project_page("GET")
def change_request_detail(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    change_request = _change_request_for(project, pk)
    return render(request, "rollouts/change_request.html", _change_request_context(request, project, change_request))


def _change_request_action(request: HttpRequest, project: Project, pk: int, rule: permissions.Rule, act: Any,
                           success: str | Callable[[ChangeRequest], str],
                           form: tuple[str, Any] | None = None) -> HttpResponse:
    """Run one action on a request if `rule` allows the person (the service asks again, under
    the row lock), then answer with its refreshed body (htmx) or page. `success` is the
    message, or makes it from the request as the action left it. `form`: the context name
    of the action's form and a function making it from the posted data; a refused form comes
    back with its errors beside its fields, and nothing is done."""
    change_request = _change_request_for(project, pk)
    if refusal := refused(request, rule, change_request):
        return refusal
    status = 200
    refused_forms: dict[str, Any] = {}
    bound = None
    if form is not None:
        name, make = form
        bound = make(request.POST, auto_id=FORM_IDS[name])
    if bound is not None and not bound.is_valid():
        refused_forms[form[0]] = bound
        messages.error(request, "Nothing was recorded: " + " ".join(
            " ".join(errors) for errors in bound.errors.values()))
        status = 422
    else:
        try:
            act(change_request, bound.cleaned_data if bound is not None else {})
        except ValidationError as exc:
            if bound is not None and hasattr(exc, "error_dict"):
                add_service_errors(bound, exc)
                refused_forms[form[0]] = bound
            messages.error(request, " ".join(exc.messages))
            status = 422
        else:
            messages.success(request, success(_change_request_for(project, pk)) if callable(success) else success)
    change_request = _change_request_for(project, pk)
    if not request.htmx:
        if status == 200:
            return redirect("rollouts:change_request", project_key=project.key, pk=pk)
        return render(request, "rollouts/change_request.html",
                      _change_request_context(request, project, change_request, refused_forms), status=status)
    response = render(request, "rollouts/_cr_body.html",
                      _change_request_context(request, project, change_request, refused_forms), status=status)
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
            rule: permissions.Rule, *, rejecting: bool = False) -> HttpResponse:
    """Approve or reject: approvers only. Rejecting needs a reason (the comment)."""
    return _change_request_action(
        request, project, pk, rule,
        lambda cr, data: decide(change_request=cr, actor=request.user, comment=data.get("comment", "")),
        success, ("decision_form", functools.partial(DecisionForm, rejecting=rejecting)))


@project_page("POST")
def change_request_approve(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    return _decide(request, project, pk, approving.change_request_approve, _approval_message,
                   permissions.APPROVE)


@project_page("POST")
def change_request_reject(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    return _decide(request, project, pk, approving.change_request_reject,
                   "Rejected: the request is closed, and the requester is told why.", permissions.REJECT,
                   rejecting=True)


@project_page("POST")
def change_request_comment(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    return _change_request_action(
        request, project, pk, permissions.COMMENT,
        lambda cr, data: approving.change_request_comment(change_request=cr, actor=request.user, body=data["body"]),
        "Comment added.", ("comment_form", CommentForm))


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
        "Scheduled: it will be applied at that time, after the same checks.", ("schedule_form", ScheduleForm))


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

