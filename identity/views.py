"""Single sign-on in the console: starting a sign-in at the identity provider, its callback,
signing out (at the provider too), and the project page where admins edit sign-in role rules
and sign members out everywhere.

No path of a sign-in answers 500: whatever the provider or the browser sends back (an error, a
used or foreign state, a refused token request, a token that does not verify) ends on a page
that says what happened, and the refusal is in the audit trail."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

import requests
from django.conf import settings
from django.contrib import auth, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django.views.generic import View
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from flags.constants import Role
from flags.models import Project
from flags.shortcuts import REFUSED, project_page, refused, report
from identity import permissions, provider, selectors, services
from identity.forms import GroupRoleRuleForm, RuleRowForm
from identity.models import GroupRoleRule

logger = logging.getLogger(__name__)

# What the provider's error codes (RFC 6749 4.1.2.1, OpenID Connect 3.1.2.6) mean to a person.
PROVIDER_ERRORS = {
    "access_denied": "The sign-in was declined at the identity provider.",
    "login_required": "The identity provider needs you to sign in there first.",
    "consent_required": "The identity provider needs your consent first.",
    "interaction_required": "The identity provider needs you to finish signing in there.",
    "temporarily_unavailable": "The identity provider is busy: try again in a moment.",
    "server_error": "The identity provider failed to sign you in.",
}


def _failed(request: HttpRequest, reason: str, *, status: int = 400, record: bool = True) -> HttpResponse:
    if record:
        services.sign_in_refusal_record(host=provider.issuer_host(), reason=reason)
    return render(request, "identity/sign_in_failed.html", {"reason": reason, "provider_name": settings.OIDC_PROVIDER_NAME},
                  status=status)


def _unreachable(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.warning("single sign-on: identity provider unreachable: %s", exc)
    return _failed(request, "The identity provider cannot be reached right now: try again in a moment.", status=502)


class SignInStart(OIDCAuthenticationRequestView):
    """GET /sso/login/: to the provider's authorization endpoint with state, nonce and a PKCE
    challenge (the verifier stays in the session)."""

    def __init__(self, **kwargs: Any) -> None:
        View.__init__(self, **kwargs)  # the library's reads endpoints from settings: ours come from discovery

    def get(self, request: HttpRequest) -> HttpResponse:
        if not provider.sso_enabled():
            raise Http404("Single sign-on is not configured.")
        try:
            document = provider.metadata()
        except provider.ProviderUnavailable as exc:
            return _unreachable(request, exc)
        self.OIDC_OP_AUTH_ENDPOINT = document["authorization_endpoint"]
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        return super().get(request)


class SignInCallback(OIDCAuthenticationCallbackView):
    """GET /sso/callback/: the provider's answer. A state is used once (the library deletes it
    from the session before the code is exchanged), so the same callback URL a second time, or
    in another browser, is refused."""

    def get(self, request: HttpRequest) -> HttpResponse:
        if not provider.sso_enabled():
            raise Http404("Single sign-on is not configured.")
        state = request.GET.get("state", "")
        states = request.session.get("oidc_states")
        states = states if isinstance(states, dict) else {}
        if error := request.GET.get("error"):
            if state in states:  # that sign-in is over: its state cannot be used again
                del states[state]
                request.session.modified = True
            if request.user.is_authenticated:
                auth.logout(request)
            reason = PROVIDER_ERRORS.get(error, "The identity provider refused the sign-in.")
            description = request.GET.get("error_description", "")[:300]
            return _failed(request, f"{reason} ({error[:60]}{': ' + description if description else ''})")
        if not request.GET.get("code") or not state:
            return _failed(request, "This address is not an answer from the identity provider.")
        if state not in states:
            return _failed(request, "This sign-in link was already used, has expired, or was started in another "
                                    "browser.")
        answered_by = request.GET.get("iss")
        if answered_by is not None and answered_by.rstrip("/") != provider.issuer():  # RFC 9207: a mix-up
            del states[state]
            request.session.modified = True
            return _failed(request, "The answer came from another identity provider.")
        try:
            return super().get(request)
        except services.SignInRefused as exc:
            return _failed(request, str(exc))
        except SuspiciousOperation as exc:
            logger.warning("single sign-on refused: %s", exc)
            return _failed(request, "The identity provider's answer could not be trusted.")
        except (provider.ProviderUnavailable, requests.RequestException) as exc:
            return _unreachable(request, exc)

    def login_failure(self) -> HttpResponse:
        user = getattr(self, "user", None)
        if user is not None and not user.is_active:
            return _failed(self.request, "This account is deactivated in the console: ask a site administrator.",
                           status=403)
        return _failed(self.request, "The sign-in did not complete: sign in again.")


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    """Sign out here and, for a session that came through the identity provider, there too
    (RP-initiated logout: its end_session_endpoint with id_token_hint and post_logout_redirect_uri)."""
    id_token = request.session.get("oidc_id_token")
    end_session = ""
    if id_token and provider.sso_enabled():
        try:
            end_session = provider.metadata().get("end_session_endpoint") or ""
        except provider.ProviderUnavailable as exc:
            logger.warning("single sign-on: signing out here only: %s", exc)
    auth.logout(request)
    if not end_session:
        return redirect(settings.LOGOUT_REDIRECT_URL)
    query = urlencode({"id_token_hint": id_token, "client_id": settings.OIDC_RP_CLIENT_ID,
                       "post_logout_redirect_uri": request.build_absolute_uri(reverse("login"))})
    # A page that moves on by itself, not a redirect: the Content-Security-Policy's form-action
    # ('self') also covers where a submitted form is redirected, and the provider is elsewhere.
    return render(request, "identity/signing_out.html", {
        "end_session_url": f"{end_session}{'&' if '?' in end_session else '?'}{query}",
        "provider_name": settings.OIDC_PROVIDER_NAME})


# --- the project's sign-in page: rules and sessions ---------------------------------------------


def _page(request: HttpRequest, project: Project, *, form: GroupRoleRuleForm | None = None,
          failed: tuple[int, RuleRowForm] | None = None, status: int = 200) -> HttpResponse:
    rules = list(selectors.project_rules(project))
    rows = [(rule, failed[1] if failed and failed[0] == rule.pk else
             RuleRowForm(initial={"group": rule.group, "role": rule.role}, rule_id=rule.pk))
            for rule in rules]
    from_idp = selectors.idp_granted(project)
    members: dict[int, dict[str, Any]] = {}
    for membership in project.memberships.select_related("user").order_by("user__username", "role"):
        row = members.setdefault(membership.user_id, {"user": membership.user, "roles": []})
        row["roles"].append((Role(membership.role), (membership.user_id, membership.role) in from_idp))
    return render(request, "identity/project_sign_in.html", {
        "project": project, "rows": rows, "form": form or GroupRoleRuleForm(), "members": list(members.values()),
        "sso_enabled": provider.sso_enabled(), "issuer": settings.OIDC_ISSUER, "groups_claim": settings.OIDC_GROUPS_CLAIM,
        "local_passwords": settings.LOCAL_PASSWORDS,
    }, status=status)


def _rule_of(project: Project, rule_id: int) -> GroupRoleRule:
    return get_object_or_404(GroupRoleRule, project=project, pk=rule_id)


@project_page("GET", rule=permissions.MANAGE_SIGN_IN_RULES)
def project_sign_in(request: HttpRequest, project: Project) -> HttpResponse:
    return _page(request, project)


@project_page("POST", rule=permissions.MANAGE_SIGN_IN_RULES)
def rule_create(request: HttpRequest, project: Project) -> HttpResponse:
    form = GroupRoleRuleForm(request.POST)
    if form.is_valid():
        group, role = form.cleaned_data["group"], Role(form.cleaned_data["role"])
        if report(request, lambda: services.group_rule_create(project=project, group=group, role=role, actor=request.user),
                  f"Members of group “{group.strip()}” become {role.label} at their next sign-in.",
                  form) is not REFUSED:
            return redirect("identity:project_sign_in", project_key=project.key)
    return _page(request, project, form=form, status=422)


@project_page("POST", rule=permissions.MANAGE_SIGN_IN_RULES)
def rule_update(request: HttpRequest, project: Project, rule_id: int) -> HttpResponse:
    rule = _rule_of(project, rule_id)
    form = RuleRowForm(request.POST, rule_id=rule.pk)
    if form.is_valid():
        group, role = form.cleaned_data["group"], Role(form.cleaned_data["role"])
        if report(request, lambda: services.group_rule_update(rule=rule, group=group, role=role, actor=request.user),
                  lambda saved: f"Rule saved: group “{saved.group}” → {saved.get_role_display()}.",
                  form) is not REFUSED:
            return redirect("identity:project_sign_in", project_key=project.key)
    return _page(request, project, failed=(rule.pk, form), status=422)


@project_page("POST", rule=permissions.MANAGE_SIGN_IN_RULES)
def rule_delete(request: HttpRequest, project: Project, rule_id: int) -> HttpResponse:
    rule = _rule_of(project, rule_id)
    label = f"group “{rule.group}” → {rule.get_role_display()}"
    services.group_rule_delete(rule=rule, actor=request.user)
    messages.success(request, f"Rule deleted ({label}). Roles it granted go at each member's next sign-in.")
    return redirect("identity:project_sign_in", project_key=project.key)


@project_page("POST", rule=permissions.REVOKE_SESSIONS)
def sessions_revoke(request: HttpRequest, project: Project) -> HttpResponse:
    user_id = request.POST.get("user", "")
    # Only members of this project: an id from elsewhere is not found.
    person = get_user_model().objects.filter(
        pk=int(user_id), memberships__project=project).distinct().first() if user_id.isascii() and user_id.isdigit() else None
    if person is None:
        raise Http404("No such member.")
    ended = report(request, lambda: services.user_sessions_revoke(user=person, actor=request.user, project=project),
                   lambda n: f"{person.get_username()} is signed out everywhere ({n} session{'' if n == 1 else 's'} "
                             "ended).")
    if ended is not REFUSED and person.pk == request.user.pk:
        return redirect("login")
    return redirect("identity:project_sign_in", project_key=project.key)


@login_required
@require_GET
def all_rules(request: HttpRequest) -> HttpResponse:
    """Site staff: every project's sign-in role rules."""
    if refusal := refused(request, permissions.VIEW_ALL_SIGN_IN_RULES):
        return refusal
    return render(request, "identity/all_rules.html", {
        "rules": selectors.all_rules(), "sso_enabled": provider.sso_enabled(), "issuer": settings.OIDC_ISSUER,
        "groups_claim": settings.OIDC_GROUPS_CLAIM})
