"""Console views for the flag catalog. Function views; htmx requests get fragments (`_<name>.html`).

Every view loads its objects through the project the user belongs to (ids from another
project answer 404) and checks the permission on the object before acting.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseClientRedirect

from flags import fragments, permissions, selectors, services
from flags.constants import BehaviorSurface, LifecycleStage
from flags.evaluation.targeting_schema import referenced_segments
from flags.forms import (
    FlagCreateForm,
    FlagEditForm,
    TargetingForm,
    VariationForm,
)
from flags.models import Flag, Project, Segment, Targeting, Variation
from flags.permissions import can_edit_catalog, can_manage_members, can_manage_sdk_keys, role_labels
from flags.selectors import FlagFilters
from flags.shortcuts import REFUSED, denied, flag_detail_for, flag_page, project_page, refused, report, with_messages

# --- projects and the flag list ------------------------------------------------------------


@login_required
@require_GET
def project_list(request: HttpRequest) -> HttpResponse:
    projects = selectors.project_list_for(request.user)
    return render(request, "flags/project_list.html", {"projects": projects})


@project_page("GET")
@vary_on_headers("HX-Request")  # the same URL answers a fragment or a page: caches must tell them apart
def flag_list(request: HttpRequest, project: Project) -> HttpResponse:
    def param(name: str, limit: int = 100) -> str:
        return request.GET.get(name, "").replace("\x00", "").strip()[:limit]  # PostgreSQL refuses NUL

    filters = FlagFilters(q=param("q"), surface=param("surface"), owner=param("owner"), stage=param("stage"),
                          tag=param("tag"))
    context = {
        "project": project,
        "flags": selectors.flag_list(project, filters),
        "filters": filters,
        "environments": list(project.environments.all()),
        "surfaces": BehaviorSurface.choices,
        "stages": LifecycleStage.choices,
        "owners": selectors.owner_choices(project),
        "tags": selectors.tag_names(project),
        "can_edit": can_edit_catalog(request.user, project),
        "can_manage_members": can_manage_members(request.user, project),
        "can_manage_sdk_keys": can_manage_sdk_keys(request.user, project),
        "roles": role_labels(request.user, project),
    }
    # A history restore (back button after a cache miss) needs the whole page, not the table.
    fragment = request.htmx and not request.htmx.history_restore_request
    template = "flags/_flag_table.html" if fragment else "flags/flag_list.html"
    return render(request, template, context)


# --- flags ---------------------------------------------------------------------------------


@project_page("GET", "POST", rule=permissions.CREATE_FLAGS)
def flag_create(request: HttpRequest, project: Project) -> HttpResponse:
    form = FlagCreateForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        variations, fallback_key = form.variations()
        flag = report(request, lambda: services.flag_create(
            project=project, key=form.cleaned_data["key"], value_type=form.cleaned_data["value_type"],
            variations=variations, fallback_variation_key=fallback_key, tags=form.cleaned_data["tags"],
            actor=request.user, **form.contract(),
        ), lambda flag: f"Flag “{flag.key}” created. It is off in every environment.", form)
        if flag is not REFUSED:
            return redirect("flags:flag_detail", project_key=project.key, flag_key=flag.key)
    return render(request, "flags/flag_form.html", {"project": project, "form": form, "creating": True},
                  status=422 if form.errors else 200)


@project_page("GET")
def flag_detail(request: HttpRequest, project: Project, flag_key: str) -> HttpResponse:
    flag = flag_detail_for(project, flag_key)
    variations = list(flag.variations.all())
    targetings = list(flag.targetings.all())
    can_edit = can_edit_catalog(request.user, project, flag)
    governed = services.governed_served_variations(flag)
    last_evaluated = dict(flag.evaluation_records.values_list("environment_id", "last_evaluated_at"))
    missing = services.turn_on_problems(flag)
    return render(request, "flags/flag_detail.html", {
        "project": project,
        "flag": flag,
        "variations": [fragments.variation_view(flag, v, governed) for v in variations],
        "governed_contract": bool(governed),
        "targetings": [{**fragments.targeting_view(request, flag, t), "last_evaluated": last_evaluated.get(t.environment_id),
                        "turn_on_missing": missing if t.environment.is_governed and not t.enabled else []}
                       for t in targetings],
        "archive_problem": services.archive_problem(flag, targetings),
        "can_edit": can_edit,
        "variation_form": VariationForm(flag=flag, auto_id="id_new_%s") if can_edit else None,
        "tab": "history" if request.GET.get("tab") == "history" else "overview",
    })


@flag_page("GET", "POST", rule=permissions.EDIT_CONTRACT)
def flag_edit(request: HttpRequest, project: Project, flag: Flag) -> HttpResponse:
    form = FlagEditForm(request.POST or None, flag=flag, initial=FlagEditForm.initial_for(flag))
    if request.method == "POST" and form.is_valid():
        fallback_moves = form.cleaned_data["fallback_variation"] != flag.fallback_variation.key
        schema_moves = "json_schema" in form.cleaned_data and form.cleaned_data["json_schema"] != flag.json_schema
        if (fallback_moves or schema_moves) and services.governed_served_variations(flag):
            return denied(request, GOVERNED_EDIT.format(key=flag.key, what="a new fallback or JSON Schema"))
        if report(request, lambda: services.flag_update(
            flag=flag, actor=request.user, expected_version=form.cleaned_data["version"],
            fallback_variation_key=form.cleaned_data["fallback_variation"], tags=form.cleaned_data["tags"],
            **form.contract(),
        ), f"Contract of “{flag.key}” saved.", form) is not REFUSED:
            return redirect("flags:flag_detail", project_key=project.key, flag_key=flag.key)
    return render(request, "flags/flag_form.html", {"project": project, "flag": flag, "form": form},
                  status=422 if form.errors else 200)


@flag_page("POST", rule=permissions.ARCHIVE_FLAG)
def flag_archive(request: HttpRequest, project: Project, flag: Flag) -> HttpResponse:
    """Archive (or, with `restore`, bring back) a flag, with a reason."""
    restoring = request.POST.get("action") == "restore"
    reason = request.POST.get("reason", "")  # the services refuse one that is too long; nothing is cut
    try:
        if restoring:
            services.flag_restore(flag=flag, actor=request.user, reason=reason)
            messages.success(request, f"“{flag.key}” restored: it is served again.")
        else:
            flag = services.flag_archive(flag=flag, actor=request.user, reason=reason)
            messages.success(request, f"“{flag.key}” archived. It is served until "
                                      f"{timezone.localtime(flag.served_until):%d %b %Y %H:%M}, then answers "
                                      "FLAG_NOT_FOUND.")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    url = reverse("flags:flag_detail", kwargs={"project_key": project.key, "flag_key": flag.key})
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


# --- variations (inline, htmx) -------------------------------------------------------------


GOVERNED_EDIT = ("“{key}” is served in a governed environment: {what} needs approval. Use Edit on the flag page, "
                 "which submits a change request for it.")


def _variation_for(flag: Flag, variation_key: str) -> Variation:
    for variation in flag.variations.all():
        if variation.key == variation_key:
            return variation
    raise Http404("No such variation.")


@project_page("GET")
def variation_row(request: HttpRequest, project: Project, flag_key: str, variation_key: str) -> HttpResponse:
    flag = flag_detail_for(project, flag_key)
    variation = _variation_for(flag, variation_key)
    return render(request, "flags/_variation_row.html", {
        "project": project, "flag": flag,
        "row": fragments.variation_view(flag, variation, services.governed_served_variations(flag)),
        "can_edit": can_edit_catalog(request.user, project, flag),
    })


@project_page("GET", "POST")
def variation_edit(request: HttpRequest, project: Project, flag_key: str, variation_key: str) -> HttpResponse:
    flag = flag_detail_for(project, flag_key)
    variation = _variation_for(flag, variation_key)
    if refusal := refused(request, permissions.EDIT_VARIATIONS, flag):
        return refusal
    # Ids of their own: the page also holds the "add a variation" form.
    form = VariationForm(request.POST or None, flag=flag, variation=variation,
                         initial=VariationForm.initial_for(variation), auto_id=f"id_{variation.key}_%s")
    if request.method == "POST" and form.is_valid():
        governed = services.governed_served_variations(flag)
        if (form.cleaned_data.get("value", variation.value) != variation.value and variation.key in governed):
            return denied(request, GOVERNED_EDIT.format(key=variation.key, what="a new value"))
        if governed and form.cleaned_data.get("risk_rank", variation.risk_rank) < variation.risk_rank:
            return denied(request, GOVERNED_EDIT.format(key=flag.key, what="a lower risk rank"))
        saved = report(request, lambda: services.variation_update(variation=variation, actor=request.user,
                                                                   **form.cleaned_data),
                       f"Variation “{variation.key}” saved.", form)
        if saved is not REFUSED:
            return fragments.variation_saved_response(request, project, flag, saved)
    template = "flags/_variation_edit_row.html" if request.htmx else "flags/variation_form.html"
    return render(request, template, {"project": project, "flag": flag, "variation": variation, "form": form},
                  status=422 if form.errors else 200)


@flag_page("POST", rule=permissions.ADD_VARIATIONS)
def variation_create(request: HttpRequest, project: Project, flag: Flag) -> HttpResponse:
    form = VariationForm(request.POST, flag=flag, auto_id="id_new_%s")
    if form.is_valid():
        if report(request, lambda: services.variation_create(flag=flag, actor=request.user, **form.cleaned_data),
                  lambda created: f"Variation “{created.key}” added.", form) is not REFUSED:
            url = reverse("flags:flag_detail", kwargs={"project_key": project.key, "flag_key": flag.key})
            return HttpResponseClientRedirect(url + "#variations") if request.htmx else redirect(url)
    template = "flags/_variation_create_form.html" if request.htmx else "flags/variation_form.html"
    return render(request, template, {"project": project, "flag": flag, "variation_form": form, "form": form},
                  status=422)


@project_page("POST")
def variation_delete(request: HttpRequest, project: Project, flag_key: str, variation_key: str) -> HttpResponse:
    flag = flag_detail_for(project, flag_key)
    variation = _variation_for(flag, variation_key)
    if refusal := refused(request, permissions.DELETE_VARIATIONS, flag):
        return refusal
    report(request, lambda: services.variation_delete(variation=variation, actor=request.user),
           f"Variation “{variation_key}” deleted.")
    url = reverse("flags:flag_detail", kwargs={"project_key": project.key, "flag_key": flag.key})
    return HttpResponseClientRedirect(url + "#variations") if request.htmx else redirect(url)


# --- targeting -----------------------------------------------------------------------------


def _targeting_for(flag: Flag, environment_key: str) -> Targeting:
    for targeting in flag.targetings.all():
        if targeting.environment.key == environment_key:
            return targeting
    raise Http404("No such environment.")


def _governed_refusal(request: HttpRequest, targeting: Targeting) -> HttpResponse:
    return denied(
        request,
        f"{targeting.environment.name} is a governed environment: propose the change instead, and it applies "
        "at once or waits for approval as the environment's policy says.",
    )


@project_page("GET", "POST")
def targeting_edit(request: HttpRequest, project: Project, flag_key: str, environment_key: str) -> HttpResponse:
    flag = flag_detail_for(project, flag_key)
    targeting = _targeting_for(flag, environment_key)
    if targeting.environment.is_governed:
        return _governed_refusal(request, targeting)
    if refusal := refused(request, permissions.EDIT_TARGETING, flag, targeting.environment):
        return refusal
    variations = list(flag.variations.all())
    form = TargetingForm(request.POST or None, targeting=targeting, variations=variations,
                         initial=TargetingForm.initial_for(targeting, variations))
    if request.method == "POST" and form.is_valid():
        def saved(updated: Targeting) -> str:
            if updated.version == targeting.version:
                return f"No change: “{flag.key}” in {targeting.environment.name} already serves this. Nothing was written."
            return f"Targeting of “{flag.key}” in {targeting.environment.name} saved."

        if report(request, lambda: services.targeting_update(targeting=targeting, actor=request.user,
                                                             expected_version=form.cleaned_data["version"],
                                                             **form.changes()),
                  saved, form) is not REFUSED:
            url = reverse("flags:flag_detail", kwargs={"project_key": project.key, "flag_key": flag.key})
            return redirect(url + f"#env-{targeting.environment.key}")
    segments = list(project.segments.values_list("key", flat=True))
    return render(request, "flags/targeting_form.html", {
        "project": project, "flag": flag, "targeting": targeting, "form": form, "segments": segments,
    }, status=422 if form.errors else 200)


@project_page("POST")
def targeting_toggle(request: HttpRequest, project: Project, flag_key: str, environment_key: str) -> HttpResponse:
    flag = flag_detail_for(project, flag_key)
    targeting = _targeting_for(flag, environment_key)
    if targeting.environment.is_governed:
        return _governed_refusal(request, targeting)
    if refusal := refused(request, permissions.TOGGLE_FLAG, flag, targeting.environment):
        return refusal
    # The version the page showed: the service refuses the flip if the targeting moved since.
    version = request.POST.get("version", "")
    status = 200
    if not (version.isascii() and version.isdigit() and len(version) < 10):
        messages.error(request, "This page is out of date. Reload it and try again.")
        status = 409
    else:
        try:
            targeting = services.targeting_update(
                targeting=targeting, actor=request.user, expected_version=int(version), enabled=not targeting.enabled
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            targeting.refresh_from_db()
        else:
            state = "on" if targeting.enabled else "off"
            messages.success(request, f"“{flag.key}” is now {state} in {targeting.environment.name}.")
    if not request.htmx:
        url = reverse("flags:flag_detail", kwargs={"project_key": project.key, "flag_key": flag.key})
        return redirect(url + f"#env-{targeting.environment.key}")
    response = render(request, "flags/_targeting_card.html",
                      fragments.targeting_card_context(request, project, flag, targeting), status=status)
    return with_messages(request, response)


# --- segments ------------------------------------------------------------------------------


def _segment_usages_by_key(project: Project, segments: list[Segment]) -> dict[str, list[str]]:
    """What `services.segment_usages` says of each segment (targeting rules in any environment,
    other segments' rules), for the whole list in one query rather than two per segment."""
    usages: dict[str, list[str]] = {segment.key: [] for segment in segments}
    targetings = (Targeting.objects.filter(flag__project=project).order_by("flag__key", "environment__sort_order")
                  .values_list("flag__key", "environment__name", "rules"))
    for flag_key, environment_name, rules in targetings:
        for key in referenced_segments(rules) & usages.keys():
            usages[key].append(f"{flag_key} in {environment_name}")
    for other in segments:
        for key in (referenced_segments(other.rules) - {other.key}) & usages.keys():
            usages[key].append(f"segment {other.key}")
    return usages


@project_page("GET")
def segment_list(request: HttpRequest, project: Project) -> HttpResponse:
    segments = list(selectors.segment_list(project))
    usages = _segment_usages_by_key(project, segments)
    return render(request, "flags/segment_list.html", {
        "project": project, "rows": [{"segment": s, "used_by": usages[s.key]} for s in segments],
        "can_edit": can_edit_catalog(request.user, project),
    })


@project_page("POST")
def segment_delete(request: HttpRequest, project: Project, segment_key: str) -> HttpResponse:
    segment = get_object_or_404(Segment, project=project, key=segment_key)
    if refusal := refused(request, permissions.DELETE_SEGMENTS, project):
        return refusal
    governed = services.segment_governed_usages(segment)
    if governed:  # the list offers no Delete here; a forged POST is refused before the service
        return denied(request, f"Segment “{segment.key}” decides who is served in a governed environment "
                               f"({', '.join(governed)}): it cannot be deleted while it is used.")
    report(request, lambda: services.segment_delete(segment=segment, actor=request.user),
           f"Segment “{segment_key}” deleted.")
    return redirect("flags:segment_list", project_key=project.key)
