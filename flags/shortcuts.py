"""The console's view shortcuts, for every app's views: find the project a person may see
(404 otherwise, so existence does not leak), find a flag in it, refuse with a readable 403
(a fragment for htmx, a page otherwise), and carry pending messages on an htmx answer."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string

from flags import selectors
from flags.models import Flag, Project
from flags.permissions import can_view_project


def project_for(request: HttpRequest, project_key: str) -> Project:
    project = get_object_or_404(Project, key=project_key)
    if not can_view_project(request.user, project):
        raise Http404("No such project.")  # existence does not leak to non-members
    return project


def flag_for(project: Project, flag_key: str) -> Flag:
    """The flag with its project, owner and fallback (what forms and change control read)."""
    flag = (Flag.objects.filter(project=project, key=flag_key)
            .select_related("project", "owner_user", "fallback_variation").first())
    if flag is None:
        raise Http404("No such flag.")
    return flag


def flag_detail_for(project: Project, flag_key: str) -> Flag:
    """The flag with everything its page shows (tags, variations, targeting per environment)."""
    try:
        return selectors.flag_detail(project, flag_key)
    except Flag.DoesNotExist as exc:
        raise Http404("No such flag.") from exc


def denied(request: HttpRequest, message: str) -> HttpResponse:
    """403 with a readable fragment for htmx (swapped into the message area), a page otherwise."""
    if request.htmx:
        response = render(request, "includes/denied.html", {"message": message}, status=403)
        response["HX-Retarget"] = "#messages"
        response["HX-Reswap"] = "innerHTML"
        return response
    return render(request, "denied.html", {"message": message}, status=403)


def with_messages(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """Append pending messages as an out-of-band swap so htmx actions show feedback."""
    response.write(render_to_string("includes/messages_oob.html", {}, request=request))
    return response
