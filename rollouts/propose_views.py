"""Proposing a change to a flag's targeting in a governed environment, and the live preview of
what submitting it would do ("needs N approvals because…"). Function views; the preview is an
htmx fragment."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from flags import permissions
from flags.forms import add_service_errors
from flags.models import Project, Targeting
from flags.shortcuts import flag_for, project_page, refused
from rollouts.change_control import approval_policy, submitting
from rollouts.forms import ProposeForm
from rollouts.models import ChangeRequest
from rollouts.view_support import flag_url, targeting_for

# --- proposing a change in a governed environment --------------------------------------------


def _propose_form(request: HttpRequest, targeting: Targeting) -> ProposeForm:
    variations = list(targeting.flag.variations.all())
    return ProposeForm(request.POST or None, targeting=targeting, variations=variations,
                       initial=ProposeForm.initial_for(targeting, variations))


@project_page("GET", "POST")
def targeting_propose(request: HttpRequest, project: Project, flag_key: str, environment_key: str) -> HttpResponse:
    flag = flag_for(project, flag_key)
    targeting = targeting_for(flag, environment_key)
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
            if result.version == targeting.version:
                messages.info(request, f"No change: {flag.key} in {targeting.environment.name} already serves this. "
                                       "Nothing was written.")
            else:
                messages.success(request, f"Applied at once in {targeting.environment.name}: this change raises no risk.")
            return redirect(flag_url(project, flag, f"env-{targeting.environment.key}"))
    return render(request, "rollouts/propose.html", {
        "project": project, "flag": flag, "targeting": targeting, "form": form,
        "segments": list(project.segments.values_list("key", flat=True)),
        "policy": approval_policy.policy_for(targeting.environment),
        "operator_only": not permissions.steers(request.user, flag),
    }, status=422 if form.errors else 200)


def _field_words(form: ProposeForm, name: str) -> str:
    """A field as the preview names it: the rule editor's by their label ("Rule 2, clause 1: values")."""
    if name == "__all__":
        return "form"
    field = form.fields.get(name)
    return str(field.label) if name.startswith("rule-") and field is not None else name.replace("_", " ")


@project_page("POST")
def targeting_preview(request: HttpRequest, project: Project, flag_key: str, environment_key: str) -> HttpResponse:
    """htmx: what submitting the form as it stands would do, before it is submitted."""
    flag = flag_for(project, flag_key)
    targeting = targeting_for(flag, environment_key)
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
        problems = [f"{_field_words(form, name)}: {' '.join(errors)}" for name, errors in form.errors.items()]
    needs = preview is not None and not preview.applies_now
    return render(request, "rollouts/_preview.html", {
        "preview": preview, "problems": problems, "targeting": targeting,
        # who could approve it: the approvers other than the person proposing
        "eligible_approvers": permissions.approvers_other_than(project, request.user.pk).count() if needs else 0,
    })
