"""Sign-ins, failed sign-ins and sign-outs, recorded from Django's auth signals (the only
place those events surface); each is its own small audited transaction."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import transaction
from django.dispatch import receiver

from audit.constants import AuditAction
from audit.services import AnonymousActor, AuditTarget, record
from audit.validators import shortened


@receiver(user_logged_in)
def _logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    with transaction.atomic():
        record(actor=user, action=AuditAction.LOGIN_SUCCEEDED, target=user)


@receiver(user_logged_out)
def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is None:
        return
    with transaction.atomic():
        record(actor=user, action=AuditAction.LOGGED_OUT, target=user)


@receiver(user_login_failed)
def _login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
    username = shortened(str(credentials.get("username", "")), 150) or "(blank)"
    with transaction.atomic():
        record(actor=AnonymousActor(username), action=AuditAction.LOGIN_FAILED,
               target=AuditTarget("auth.user", username, username), summary=f"Failed sign-in as “{username}”")
