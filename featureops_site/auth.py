"""Sign-in with throttling (audit/throttle.py): a try that must wait is refused without checking
the password, says how long to wait, and is recorded."""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest

from audit import throttle
from audit.constants import AuditAction
from audit.services import AnonymousActor, AuditTarget, record


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


class ThrottledLoginView(LoginView):
    authentication_form = ThrottledAuthenticationForm
    redirect_authenticated_user = True
