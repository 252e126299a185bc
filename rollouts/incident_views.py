"""Change control on a flag and in an incident: the flag page's change-control panel, the kill
switch, incident mode and its lift, and follow-ups to acknowledge. Function views; htmx requests
get fragments."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django_htmx.http import HttpResponseClientRedirect

from flags import permissions
from flags.fragments import served_when_off, targeting_card_context
from flags.models import Project
from flags.shortcuts import REFUSED, flag_for, project_page, refused, report, with_messages
from rollouts import selectors
from rollouts.change_control import follow_ups, incident_mode, kill_switch
from rollouts.forms import AcknowledgeForm, IncidentForm, ReasonForm
from rollouts.models import FollowUp, Incident, RolloutPlan
from rollouts.view_support import flag_url, targeting_for


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
    targeting = targeting_for(flag, environment_key)
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
                    return redirect(flag_url(project, flag, f"env-{environment_key}"))
                targeting = targeting_for(flag, environment_key)
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


def _preview(project: Project, environment_key: str | None, surfaces: list[str]) -> dict[str, Any]:
    """What incident mode would stop with these choices, and the confirmation naming the count."""
    environment = project.environments.filter(key=environment_key or "").first() if environment_key else None
    if environment is None:
        return {"preview_environment": None, "preview": [], "preview_confirm": "Send these flags to their fallbacks now?"}
    scope = selectors.incident_scope(environment, surfaces)
    count = f"{len(scope)} flag{'' if len(scope) == 1 else 's'}"
    return {"preview_environment": environment, "preview": [
        {"targeting": t, "flag": t.flag, "fallback": t.flag.fallback_variation, "served": served_when_off(t.flag)}
        for t in scope],
        "preview_confirm": f"Send {count} in {environment.name} to {'its' if len(scope) == 1 else 'their'} "
                           "fallback now?" if scope else f"No flag of those surfaces is on in {environment.name}."}


@project_page("GET")
def incident_preview(request: HttpRequest, project: Project) -> HttpResponse:
    """htmx, live as the operator chooses: the flags incident mode would stop and what each
    would serve, before anything is confirmed. Writes nothing."""
    if refusal := refused(request, permissions.START_INCIDENT, project):
        return refusal
    return render(request, "rollouts/_incident_preview.html", {
        "project": project, **_preview(project, request.GET.get("environment"), request.GET.getlist("surfaces"))})


@project_page("GET", "POST")
def incidents(request: HttpRequest, project: Project) -> HttpResponse:
    can_flip = permissions.START_INCIDENT.allows(request.user, project)
    governed = project.environments.filter(is_governed=True).first()  # the likely target
    form = IncidentForm(request.POST or None, project=project, initial={"environment": governed})
    chosen = request.POST.get("environment") if request.method == "POST" else (governed.key if governed else None)
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
    preview = _preview(project, chosen, request.POST.getlist("surfaces")) if can_flip else {}
    return render(request, "rollouts/incidents.html", {
        "project": project, "incidents": selectors.incidents_of(project), "form": form, "can_flip": can_flip,
        "lift_form": ReasonForm(auto_id="id_lift_%s"), **preview,
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
            return redirect(flag_url(project, follow_up.flag))
        return redirect("rollouts:inbox")
    response = render(request, "rollouts/_follow_up.html", {
        "project": project, "item": follow_up, "ack_form": form, "can_acknowledge": True,
    }, status=status)
    return with_messages(request, response)
