"""The console's view shortcuts, for every app's views: find the project a person may see
(404 otherwise, so existence does not leak), find a flag in it, refuse with a readable 403
(a fragment for htmx, a page otherwise) when a permission rule says no, and carry pending
messages on an htmx answer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_http_methods

from flags import selectors
from flags.forms import add_service_errors
from flags.models import Flag, Project
from flags.permissions import Rule, can_view_project

T = TypeVar("T")


def project_for(request: HttpRequest, project_key: str) -> Project:
    project = get_object_or_404(Project, key=project_key)
    if not can_view_project(request.user, project):
        raise Http404("No such project.")  # existence does not leak to non-members
    return project


def first_or_404(queryset: QuerySet[T], what: str) -> T:
    """The one row the URL names, or a 404 that says what was not found ("No such flag.")."""
    row = queryset.first()
    if row is None:
        raise Http404(f"No such {what}.")
    return row


def flag_for(project: Project, flag_key: str) -> Flag:
    """The flag with its project, owner and fallback (what forms and change control read)."""
    return first_or_404(Flag.objects.filter(project=project, key=flag_key)
                        .select_related("project", "owner_user", "fallback_variation"), "flag")


def flag_detail_for(project: Project, flag_key: str) -> Flag:
    """The flag with everything its page shows (tags, variations, targeting per environment)."""
    try:
        return selectors.flag_detail(project, flag_key)
    except Flag.DoesNotExist as exc:
        raise Http404("No such flag.") from exc


def denied(request: HttpRequest, message: str) -> HttpResponse:
    """403 with a readable fragment for htmx (swapped into the message area), a page otherwise."""
    if request.htmx:
        response = render(request, "_denied.html", {"message": message}, status=403)
        response["HX-Retarget"] = "#messages"
        response["HX-Reswap"] = "innerHTML"
        return response
    return render(request, "denied.html", {"message": message}, status=403)


def refused(request: HttpRequest, rule: Rule, *objects: object) -> HttpResponse | None:
    """The 403 answer when `rule` does not allow the person on `objects`, None when it does:
    `if (refusal := refused(request, rules.EDIT_CONTRACT, flag)): return refusal`."""
    return None if rule.allows(request.user, *objects) else denied(request, rule.refusal)


def project_page(*methods: str, rule: Rule | None = None) -> Callable[[Callable], Callable]:
    """A view of one project: signed-in people only, these HTTP methods only (405 otherwise),
    the person's project (404 otherwise, see `project_for`) passed in place of its key, and
    `rule`, when given, asked about that project before the view runs (403 with its refusal)."""
    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def with_project(request: HttpRequest, *args: object, project_key: str, **kwargs: object) -> HttpResponse:
            project = project_for(request, project_key)
            if rule is not None and (refusal := refused(request, rule, project)):
                return refusal
            return view(request, project, *args, **kwargs)
        return login_required(require_http_methods(list(methods))(with_project))
    return decorate


def flag_page(*methods: str, rule: Rule,
              load: Callable[[Project, str], Flag] = flag_detail_for) -> Callable[[Callable], Callable]:
    """A view of one flag: as `project_page`, then the flag (404 otherwise; `load` says with
    what, by default everything its page shows) passed in place of its key, and `rule` asked
    about it before the view runs."""
    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @project_page(*methods)
        @functools.wraps(view)
        def with_flag(request: HttpRequest, project: Project, *args: object, flag_key: str,
                      **kwargs: object) -> HttpResponse:
            flag = load(project, flag_key)
            if refusal := refused(request, rule, flag):
                return refusal
            return view(request, project, flag, *args, **kwargs)
        return with_flag
    return decorate


REFUSED = object()  # what `report` answers when the service refused


def report(request: HttpRequest, write: Callable[[], Any], success: str | Callable[[Any], str] = "",
           form: forms.Form | None = None) -> Any:
    """Run one service write for a view and say how it went: the service's refusal beside the
    form's fields (`form`) or in the messages, else `success` (a text, or made from what the
    service returned) in the messages. Answers what the service returned, or REFUSED."""
    try:
        result = write()
    except ValidationError as exc:
        if form is not None:
            add_service_errors(form, exc)
        else:
            messages.error(request, " ".join(exc.messages))
        return REFUSED
    if text := success(result) if callable(success) else success:
        messages.success(request, text)
    return result


def with_messages(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """Append pending messages as an out-of-band swap so htmx actions show feedback."""
    response.write(render_to_string("_messages_oob.html", {}, request=request))
    return response
