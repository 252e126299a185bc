"""The rule editor's buttons (htmx): add, remove and move rules, add and remove clauses, switch
between the builder and the JSON view. Each receives the whole form as it stands plus an `op`,
and answers the editor re-rendered (flags/_rule_editor.html) with every value typed kept and
the element to focus next named in `data-focus`. They write nothing; they are refused to
anyone who may not edit what the editor edits (a flag's targeting in that environment, or the
project's segments), as the pages around them are."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render

from flags import permissions
from flags.forms import RuleEditorForm, SegmentForm, TargetingForm
from flags.models import Project, Segment, Targeting
from flags.rule_builder import UnknownOp
from flags.shortcuts import first_or_404, flag_for, project_page, refused


def _answer(request: HttpRequest, form: RuleEditorForm) -> HttpResponse:
    try:
        form.editor_op(request.POST.get("op", ""), request.POST)
    except UnknownOp:
        return HttpResponseBadRequest("Unknown editor action.", content_type="text/plain")
    return render(request, "flags/_rule_editor.html", {"form": form, "editor_url": request.get_full_path()})


@project_page("POST")
def targeting_rule_editor(request: HttpRequest, project: Project, flag_key: str, environment_key: str) -> HttpResponse:
    """The editor of a flag's rules in one environment: the direct targeting form's, or the
    proposal's in a governed environment (where operators use it to remove a rule)."""
    flag = flag_for(project, flag_key)
    targeting = first_or_404(Targeting.objects.filter(flag=flag, environment__key=environment_key)
                             .select_related("environment", "flag__project"), "environment")
    rule = permissions.PROPOSE_CHANGE if targeting.environment.is_governed else permissions.EDIT_TARGETING
    if refusal := refused(request, rule, flag, targeting.environment):
        return refusal
    return _answer(request, TargetingForm(targeting=targeting, variations=list(flag.variations.all())))


@project_page("POST", rule=permissions.EDIT_SEGMENTS)
def segment_rule_editor(request: HttpRequest, project: Project) -> HttpResponse:
    """The editor of a segment's attribute rules (a new segment's, or the one `?segment=` names:
    it is not offered as a segment of its own rules, and its stored rules keep their shape)."""
    editing = request.GET.get("segment", "")
    segments = list(Segment.objects.filter(project=project).order_by("key").values_list("key", "rules"))
    return _answer(request, SegmentForm(segment_keys=[key for key, _ in segments if key != editing],
                                        stored_rules=next((rules for key, rules in segments if key == editing), [])))
