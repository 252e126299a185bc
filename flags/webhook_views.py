"""Project webhooks in the console: create (the secret shown once), activate or deactivate,
delete, send a test event, and the delivery log.

These views live in `flags` because they load the project; `webhooks` is a leaf app that
knows projects only by id. Project admins manage webhooks, with the same permission as SDK
keys (`manage_sdk_keys`): both are credentials that connect the project to other systems.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.vary import vary_on_headers

from flags import permissions
from flags.forms import add_service_errors
from flags.models import Project
from flags.shortcuts import project_page, report
from webhooks import selectors as webhook_selectors
from webhooks import services as webhook_services
from webhooks.constants import EVENT_PREFIXES
from webhooks.models import URL_MAX_LENGTH, Webhook


class WebhookForm(forms.Form):
    # Checked by the service (http or https only), so the message is the same everywhere.
    url = forms.CharField(label="URL", max_length=URL_MAX_LENGTH, widget=forms.URLInput,
                          help_text="Where to POST events, e.g. https://ci.example.com/hooks/featureops.")
    events = forms.MultipleChoiceField(choices=EVENT_PREFIXES, widget=forms.CheckboxSelectMultiple, required=False,
                                       help_text="None ticked: every event.")
    description = forms.CharField(max_length=200, required=False, help_text="What receives the events.")


def _context(project: Project, form: WebhookForm, **extra: object) -> dict[str, object]:
    return {"project": project, "form": form, "event_prefixes": EVENT_PREFIXES,
            "webhooks": webhook_selectors.project_webhooks(project_id=project.pk),
            "deliveries": webhook_selectors.recent_deliveries(project_id=project.pk), **extra}


def _webhook_for(project: Project, webhook_id: int) -> Webhook:
    return get_object_or_404(Webhook, pk=webhook_id, project_id=project.pk)


@project_page("GET", "POST", rule=permissions.MANAGE_WEBHOOKS)
@vary_on_headers("HX-Request")  # the same URL answers the delivery log alone or the page
def webhooks(request: HttpRequest, project: Project) -> HttpResponse:
    if request.method == "GET" and request.htmx and not request.htmx.history_restore_request:
        return render(request, "flags/_delivery_log.html",
                      {"project": project, "deliveries": webhook_selectors.recent_deliveries(project_id=project.pk)})
    form = WebhookForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            webhook, secret = webhook_services.webhook_create(
                project_id=project.pk, project_label=str(project), url=form.cleaned_data["url"],
                events=form.cleaned_data["events"], description=form.cleaned_data["description"], actor=request.user)
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            # Shown once, in this response only; never shown again or logged.
            return render(request, "flags/webhooks.html",
                          _context(project, WebhookForm(), new_secret=secret, new_webhook=webhook))
    return render(request, "flags/webhooks.html", _context(project, form), status=422 if form.errors else 200)


@project_page("POST", rule=permissions.MANAGE_WEBHOOKS)
def webhook_set_active(request: HttpRequest, project: Project, webhook_id: int) -> HttpResponse:
    webhook = _webhook_for(project, webhook_id)
    active = request.POST.get("active") == "1"
    webhook_services.webhook_update(webhook=webhook, active=active, actor=request.user, project_label=str(project))
    messages.success(request, f"Webhook “{webhook}” is {'active' if active else 'inactive'}."
                     + ("" if active else " Its pending retries were abandoned."))
    return redirect("flags:webhooks", project_key=project.key)


@project_page("POST", rule=permissions.MANAGE_WEBHOOKS)
def webhook_delete(request: HttpRequest, project: Project, webhook_id: int) -> HttpResponse:
    webhook = _webhook_for(project, webhook_id)
    label = str(webhook)
    report(request, lambda: webhook_services.webhook_delete(webhook=webhook, actor=request.user,
                                                            project_label=str(project),
                                                            reason=request.POST.get("reason", "")),
           f"Deleted webhook “{label}” and its delivery log.")
    return redirect("flags:webhooks", project_key=project.key)


@project_page("POST", rule=permissions.MANAGE_WEBHOOKS)
def webhook_test(request: HttpRequest, project: Project, webhook_id: int) -> HttpResponse:
    webhook = _webhook_for(project, webhook_id)
    report(request, lambda: webhook_services.webhook_send_test(webhook=webhook, actor=request.user),
           f"Test event queued for “{webhook}”: it appears in the delivery log below.")
    return redirect("flags:webhooks", project_key=project.key)
