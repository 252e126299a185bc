"""Sign-in with a local password, throttled (audit/throttle.py): a try that must wait is refused
without checking the password, says how long to wait, and is recorded. With LOCAL_PASSWORDS=0
there is no password sign-in at all: the form is gone from the sign-in page, and a password
posted to it or to the admin's login is refused (403); people sign in through the identity
provider (identity/, single sign-on)."""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.views import LoginView
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode

from audit import throttle
from audit.constants import AuditAction
from audit.services import AnonymousActor, AuditTarget, record
from identity.provider import sso_enabled


def client_address(request: HttpRequest) -> str | None:
    """The sign-in's client: REMOTE_ADDR, or behind TRUSTED_PROXY_COUNT proxies the entry of
    X-Forwarded-For the outermost of them appended (entries left of it are the client's to forge)."""
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies > 0:
        forwarded = [entry.strip() for entry in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        if len(forwarded) >= proxies and forwarded[-proxies]:
            return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR") or None


def _wait_in_words(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} second{'' if seconds == 1 else 's'}"
    return f"{math.ceil(seconds / 60)} minutes"


class ThrottledAuthenticationForm(AuthenticationForm):
    def clean(self) -> dict[str, Any]:
        username = (self.data.get("username") or "").strip()[:150]
        address = client_address(self.request) if self.request else None
        refused = throttle.refusal(username, address) if username else None
        if refused:
            wait = _wait_in_words(refused.retry_after)
            cause = "from this address" if refused.per_address else "for this account from this address"
            with transaction.atomic():
                record(actor=AnonymousActor(username), action=AuditAction.LOGIN_THROTTLED,
                       target=AuditTarget("auth.user", username, username),
                       summary=f"Sign-in as “{username}” refused: too many recent failures {cause}; wait {wait}")
            raise ValidationError(f"Too many failed sign-ins. Try again in {wait}.", code="throttled")
        try:
            cleaned = super().clean()
        except ValidationError:
            if username:
                throttle.note_failure(username, address)
            raise
        throttle.note_success(username, address)
        return cleaned


class LocalPasswordBackend(ModelBackend):
    """Django's ModelBackend, checking no password while LOCAL_PASSWORDS is off (whoever calls
    authenticate(): the login form, the admin, a future path). Permissions are answered as ever."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None, password: str | None = None,
                     **kwargs: Any) -> AbstractBaseUser | None:
        if not settings.LOCAL_PASSWORDS:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def password_sign_in_refused(request: HttpRequest) -> HttpResponse:
    how = " Sign in with your company account instead." if sso_enabled() else ""
    return render(request, "denied.html", status=403,
                  context={"message": f"Signing in with a password is turned off on this console.{how}"})


class ThrottledLoginView(LoginView):
    authentication_form = ThrottledAuthenticationForm
    redirect_authenticated_user = True

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST" and not settings.LOCAL_PASSWORDS:
            return password_sign_in_refused(request)
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["local_passwords"] = settings.LOCAL_PASSWORDS
        if sso_enabled():
            next_url = context.get("next") or ""
            context["sso_url"] = reverse("identity:oidc_login") + (f"?{urlencode({'next': next_url})}" if next_url else "")
            context["sso_name"] = settings.OIDC_PROVIDER_NAME
        return context


def admin_login(request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
    """The admin's login page, while local passwords are on; off, staff sign in through the
    console's sign-in page (single sign-on) and a password posted here is refused."""
    if settings.LOCAL_PASSWORDS:
        return admin.site.login(request, extra_context)
    if request.method == "POST":
        return password_sign_in_refused(request)
    if request.user.is_authenticated:
        if request.user.is_active and request.user.is_staff:
            return redirect(request.GET.get("next") if _is_admin_path(request.GET.get("next")) else "admin:index")
        return render(request, "denied.html", status=403, context={"message": "The site admin is for site staff."})
    return redirect(f"{reverse('login')}?{urlencode({'next': request.GET.get('next') or reverse('admin:index')})}")


def _is_admin_path(path: str | None) -> bool:
    return bool(path) and path.startswith(reverse("admin:index")) and "//" not in path  # type: ignore[union-attr]
