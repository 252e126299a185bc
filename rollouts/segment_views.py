"""The segment editor. Every edit is submitted through change control: a segment that decides
who a governed environment serves changes at once only when that raises no risk there, and
otherwise waits in a change request (`rollouts.change_control.submitting.segment_change_submit`)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django_htmx.http import HttpResponseClientRedirect

from flags import permissions, services
from flags.forms import SegmentForm, add_service_errors, format_value
from flags.models import Project, Segment
from flags.shortcuts import project_page, refused
from rollouts.change_control import submitting, wording
from rollouts.models import ChangeRequest


def _segment_initial(segment: Segment | None) -> dict[str, Any]:
    if segment is None:
        return {}
    return {
        "name": segment.name, "description": segment.description,
        "included_keys": "\n".join(segment.included_keys), "excluded_keys": "\n".join(segment.excluded_keys),
        "rules": format_value("json", segment.rules) if segment.rules else "",
        "version": segment.version,
    }


def _segment_save(request: HttpRequest, project: Project, segment: Segment | None, data: dict[str, Any]) -> str:
    """Create the segment, or submit the edit through change control (it saves at once unless
    a governed environment would take on risk); say what happened and answer where to go next."""
    list_url = reverse("flags:segment_list", kwargs={"project_key": project.key})
    if segment is None:
        segment = services.segment_create(project=project, actor=request.user, **data)
        messages.success(request, f"Segment “{segment.key}” created.")
        return list_url
    changes = dict(data)
    expected_version, reason = changes.pop("version"), changes.pop("reason")
    result = submitting.segment_change_submit(segment=segment, changes=changes, actor=request.user,
                                                  reason=reason, expected_version=expected_version)
    if isinstance(result, ChangeRequest):
        required = result.required_approvals
        messages.success(request, f"CR-{result.pk} opened: waits for {required} approval{pluralize(required)}. "
                                  f"Segment “{segment.key}” stays as it is until the request is approved and "
                                  "applied; the approvers have been notified.")
        return wording.change_request_url(result)
    if result.version == segment.version:
        messages.info(request, f"No change: segment “{segment.key}” already is this. Nothing was written.")
    else:
        messages.success(request, f"Segment “{segment.key}” saved.")
    return list_url


def _segment_form_view(request: HttpRequest, project: Project, segment: Segment | None) -> HttpResponse:
    if refusal := refused(request, permissions.EDIT_SEGMENTS, project):
        return refusal
    # The segment's own key is not offered in its rules' segment clauses (it cannot refer to itself).
    segment_keys = list(project.segments.exclude(pk=segment.pk if segment else None).order_by("key")
                        .values_list("key", flat=True))
    form = SegmentForm(request.POST or None, editing=segment is not None, initial=_segment_initial(segment),
                       segment_keys=segment_keys, stored_rules=segment.rules if segment else [])
    if request.method == "POST" and form.is_valid():
        try:
            url = _segment_save(request, project, segment, form.changes())
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    governed = services.segment_governed_usages(segment) if segment is not None else []
    template = "flags/_segment_editor.html" if request.htmx else "flags/segment_form.html"
    return render(request, template, {
        "project": project, "segment": segment, "form": form,
        "governed_notice": _governed_segment_notice(segment, governed) if governed else "",
    }, status=422 if form.errors else 200)


def _governed_segment_notice(segment: Segment, usages: list[str]) -> str:
    """"… decides who Production serves for a and b: …", from the usages' "<flag> in <environment>"."""
    flags_by_environment: dict[str, list[str]] = {}
    for usage in usages:
        flag_key, environment_name = usage.split(" in ", 1)  # flag keys are slugs: the first " in " separates
        flags_by_environment.setdefault(environment_name, []).append(flag_key)
    where = ", and who ".join(f"{environment_name} serves for {_words_list(sorted(flag_keys))}"
                              for environment_name, flag_keys in flags_by_environment.items())
    return (f"Segment “{segment.key}” decides who {where}: a change that widens or narrows it there needs approval "
            "when it raises risk (more people reach what a rule serves, or people fall through to something "
            "riskier), and a reason. Anything else saves at once.")


def _words_list(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


@project_page("GET", "POST")
def segment_create(request: HttpRequest, project: Project) -> HttpResponse:
    return _segment_form_view(request, project, None)


@project_page("GET", "POST")
def segment_edit(request: HttpRequest, project: Project, segment_key: str) -> HttpResponse:
    segment = get_object_or_404(Segment, project=project, key=segment_key)
    return _segment_form_view(request, project, segment)


