"""API tokens in the console: a person's own personal tokens, and a project's service tokens
(its admins'). A new token is shown once, in the answer to the form that made it."""

from __future__ import annotations

import datetime
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from flags import permissions
from flags.models import AccessToken, Project
from flags.services.access_tokens import personal_token_create, service_token_create, token_revoke
from flags.shortcuts import REFUSED, project_page, report

LIFETIMES = [("7", "7 days"), ("30", "30 days"), ("90", "90 days"), ("365", "1 year")]


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses it, e.g. “CI deploy” or “release script”.")
    scopes = forms.MultipleChoiceField(choices=AccessToken.Scope.choices, widget=forms.CheckboxSelectMultiple,
                                       initial=["read"])
    lifetime = forms.ChoiceField(choices=LIFETIMES, initial="90", label="Expires after")

    def __init__(self, *args: Any, personal: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if personal:
            self.fields["scopes"].help_text = ("What the token may do, on top of your roles: it never does more than "
                                               "you may.")
            self.fields["lifetime"].choices = [*LIFETIMES, ("never", "Never (not recommended)")]
        else:
            self.fields["scopes"].help_text = ("Each scope is a role of the token's own account in this project: read "
                                               "(viewer), write (editor), approve (approver), operate (operator). Its "
                                               "approvals count as yours: it never approves what you or your other "
                                               "tokens asked for.")

    def expires_at(self) -> datetime.datetime | None:
        lifetime = self.cleaned_data["lifetime"]
        return None if lifetime == "never" else timezone.now() + datetime.timedelta(days=int(lifetime))


@login_required
@require_http_methods(["GET", "POST"])
def personal_tokens(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None, personal=True)
    context: dict[str, Any] = {}
    if request.method == "POST" and form.is_valid():
        created = report(request, lambda: personal_token_create(
            user=request.user, name=form.cleaned_data["name"], scopes=form.cleaned_data["scopes"],
            expires_at=form.expires_at(), actor=request.user), "", form)
        if created is not REFUSED:
            # Shown once, in this response only; never stored or logged.
            context = {"new_token": created[0], "raw_token": created[1]}
            form = TokenForm(personal=True)
    tokens = AccessToken.objects.filter(kind=AccessToken.Kind.PERSONAL, user=request.user)
    return render(request, "flags/personal_tokens.html", {"form": form, "tokens": tokens, "now": timezone.now(), **context},
                  status=422 if form.errors else 200)


@login_required
@require_http_methods(["POST"])
def personal_token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(AccessToken, pk=token_id, kind=AccessToken.Kind.PERSONAL, user=request.user)
    report(request, lambda: token_revoke(token=token, actor=request.user, reason=request.POST.get("reason", "")),
           f"Revoked “{token.name}” ({token.prefix}…). The API refuses it from now on.")
    return redirect("flags:personal_tokens")


@project_page("GET", "POST", rule=permissions.MANAGE_SERVICE_TOKENS)
def service_tokens(request: HttpRequest, project: Project) -> HttpResponse:
    form = TokenForm(request.POST or None, personal=False)
    context: dict[str, Any] = {}
    if request.method == "POST" and form.is_valid():
        created = report(request, lambda: service_token_create(
            project=project, name=form.cleaned_data["name"], scopes=form.cleaned_data["scopes"],
            expires_at=form.expires_at(), actor=request.user), "", form)
        if created is not REFUSED:
            context = {"new_token": created[0], "raw_token": created[1]}
            form = TokenForm(personal=False)
    tokens = (AccessToken.objects.filter(kind=AccessToken.Kind.SERVICE, project=project)
              .select_related("created_by", "user"))
    return render(request, "flags/service_tokens.html",
                  {"project": project, "form": form, "tokens": tokens, "now": timezone.now(), **context},
                  status=422 if form.errors else 200)


@project_page("POST", rule=permissions.MANAGE_SERVICE_TOKENS)
def service_token_revoke(request: HttpRequest, project: Project, token_id: int) -> HttpResponse:
    token = get_object_or_404(AccessToken, pk=token_id, kind=AccessToken.Kind.SERVICE, project=project)
    report(request, lambda: token_revoke(token=token, actor=request.user, reason=request.POST.get("reason", "")),
           f"Revoked “{token.name}” ({token.prefix}…). The API refuses it from now on; its account is deactivated.")
    return redirect("flags:service_tokens", project_key=project.key)
