"""Sign-in with throttling: after too many failures for an account or from an address, the
form refuses without checking the password, and the refusal is recorded."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.exceptions import ValidationError
from django.db import transaction

from audit import throttle
from audit.constants import AuditAction
from audit.services import AnonymousActor, AuditTarget, record


class ThrottledAuthenticationForm(AuthenticationForm):
    def clean(self) -> dict[str, Any]:
        username = (self.data.get("username") or "").strip()[:150]
        address = self.request.META.get("REMOTE_ADDR") if self.request else None
        if username and throttle.is_throttled(username, address):
            with transaction.atomic():
                record(actor=AnonymousActor(username), action=AuditAction.LOGIN_THROTTLED,
                       target=AuditTarget("auth.user", username, username),
                       summary=f"Sign-in as “{username}” refused: too many recent failures")
            minutes = max(1, settings.LOGIN_THROTTLE_SECONDS // 60)
            raise ValidationError(f"Too many failed sign-ins. Try again in {minutes} minutes.", code="throttled")
        try:
            cleaned = super().clean()
        except ValidationError:
            if username:
                throttle.note_failure(username, address)
            raise
        throttle.clear_account(username)
        return cleaned


class ThrottledLoginView(LoginView):
    authentication_form = ThrottledAuthenticationForm
    redirect_authenticated_user = True
