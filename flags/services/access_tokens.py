"""Access tokens for the management API, stored hashed; shown once when created.

A personal token acts as its user. A service token is bound to one project and acts as a service
account made for it: a user that cannot sign in, holding one project role per scope (read:
viewer, write: editor, approve: approver, operate: operator). Its roles are ordinary memberships,
so every permission rule and the four-eyes rule of change control apply to it unchanged, and the
project's Members page lists it. The person who created it answers for it
(`flags.permissions.principal_ids`): a request it opens counts as theirs, and so does its approval.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import Actor, record
from audit.validators import check_text_limit
from flags.constants import Role
from flags.models import AccessToken, Project
from flags.permissions import MANAGE_SERVICE_TOKENS, Refused
from flags.services.members import membership_grant

PERSONAL_PREFIX = "fo_pat_"
SERVICE_PREFIX = "fo_svc_"
MAX_LIFETIME = datetime.timedelta(days=366)
SCOPE_ROLES = {
    AccessToken.Scope.READ: Role.VIEWER,
    AccessToken.Scope.WRITE: Role.EDITOR,
    AccessToken.Scope.APPROVE: Role.APPROVER,
    AccessToken.Scope.OPERATE: Role.OPERATOR,
}


def hash_token(raw_token: str) -> str:
    return hashlib.sha256(raw_token.encode()).hexdigest()


def _clean(*, name: str, scopes: Iterable[str], expires_at: datetime.datetime | None,
           expiry_required: bool) -> tuple[str, list[str]]:
    name = (name or "").strip()
    errors: dict[str, str] = {}
    if not name:
        errors["name"] = "Name the token after what uses it (e.g. “CI deploy”)."
    elif len(name) > 100:
        errors["name"] = "Keep the name under 100 characters."
    chosen = sorted(set(scopes))
    unknown = [s for s in chosen if s not in AccessToken.Scope.values]
    if unknown:
        errors["scopes"] = f"Unknown scope {unknown[0]!r}: choose from {', '.join(AccessToken.Scope.values)}."
    elif not chosen:
        errors["scopes"] = "Choose at least one scope."
    now = timezone.now()
    if expires_at is None and expiry_required:
        errors["expires_at"] = "A service token needs an expiry date."
    elif expires_at is not None and expires_at <= now:
        errors["expires_at"] = "The expiry must lie in the future."
    elif expires_at is not None and expires_at > now + MAX_LIFETIME:
        errors["expires_at"] = "A token lives at most a year: rotate it before then."
    if errors:
        raise ValidationError(errors)
    return name, chosen


def _issue(token: AccessToken, prefix: str) -> str:
    raw = prefix + secrets.token_urlsafe(32)
    token.prefix, token.token_hash = raw[:12], hash_token(raw)
    token.full_clean()
    token.save()
    return raw


@transaction.atomic
def personal_token_create(*, user: AbstractBaseUser, name: str, scopes: Iterable[str],
                          expires_at: datetime.datetime | None = None, actor: Actor) -> tuple[AccessToken, str]:
    """A token acting as `user` with the user's roles, limited to `scopes`; only the user makes one."""
    if not isinstance(actor, AbstractBaseUser) or actor.pk != user.pk:
        raise Refused("People create their own personal tokens.", code="forbidden")
    name, chosen = _clean(name=name, scopes=scopes, expires_at=expires_at, expiry_required=False)
    token = AccessToken(kind=AccessToken.Kind.PERSONAL, name=name, user=user, scopes=chosen, expires_at=expires_at,
                        created_by=user)
    raw = _issue(token, PERSONAL_PREFIX)
    record(actor=actor, action=AuditAction.ACCESS_TOKEN_CREATED, target=token,
           after=_state(token), summary=f"Created personal API token {token}")
    return token, raw


@transaction.atomic
def service_token_create(*, project: Project, name: str, scopes: Iterable[str], expires_at: datetime.datetime | None,
                         actor: Actor) -> tuple[AccessToken, str]:
    """A token bound to `project`, acting as a new service account with one role per scope."""
    MANAGE_SERVICE_TOKENS.require(actor, project)
    name, chosen = _clean(name=name, scopes=scopes, expires_at=expires_at, expiry_required=True)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "token"
    username = f"svc.{project.key}.{slug}.{secrets.token_hex(3)}"[:150]  # what Django's username rule allows
    service_user = get_user_model()(username=username, first_name=f"Service token “{name}”"[:150], is_active=True)
    service_user.set_unusable_password()
    service_user.save()
    token = AccessToken(kind=AccessToken.Kind.SERVICE, name=name, user=service_user, project=project, scopes=chosen,
                        expires_at=expires_at, created_by=actor if isinstance(actor, AbstractBaseUser) else None)
    raw = _issue(token, SERVICE_PREFIX)
    for scope in chosen:
        membership_grant(project=project, user=service_user, role=SCOPE_ROLES[scope], actor=actor)
    record(actor=actor, action=AuditAction.ACCESS_TOKEN_CREATED, target=token, project=project,
           after=_state(token), summary=f"Created service API token {token} for {project.key}")
    return token, raw


@transaction.atomic
def token_revoke(*, token: AccessToken, actor: Actor, reason: str = "") -> AccessToken:
    """Revoked at once: the next request with it is refused. A service token's account is
    deactivated too, so its approvals stop counting towards open requests."""
    check_text_limit("reason", reason)
    token = AccessToken.objects.select_for_update(of=("self",)).select_related("project", "user").get(pk=token.pk)
    if token.kind == AccessToken.Kind.SERVICE:
        MANAGE_SERVICE_TOKENS.require(actor, token.project)
    elif not isinstance(actor, AbstractBaseUser) or actor.pk != token.user_id:
        raise Refused("Only its owner revokes a personal token.", code="forbidden")
    if token.revoked_at:
        return token
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    if token.kind == AccessToken.Kind.SERVICE:
        type(token.user).objects.filter(pk=token.user_id).update(is_active=False)
    record(actor=actor, action=AuditAction.ACCESS_TOKEN_REVOKED, target=token, project=token.project,
           after={"revoked_at": token.revoked_at.isoformat()}, reason=reason)
    return token


def token_for(raw_token: str) -> AccessToken | None:
    """The token a raw bearer value names (revoked or expired ones too: the caller says which)."""
    if not raw_token.startswith((PERSONAL_PREFIX, SERVICE_PREFIX)) or len(raw_token) > 200:
        return None
    return (AccessToken.objects.select_related("user", "project")
            .filter(token_hash=hash_token(raw_token)).first())


def token_used(*, token_id: int, at: datetime.datetime) -> None:
    """Record a token's last use (a task, off the request path; never moves backwards)."""
    AccessToken.objects.filter(pk=token_id).exclude(last_used_at__gte=at).update(last_used_at=at)


def _state(token: AccessToken) -> dict[str, object]:
    return {"name": token.name, "kind": token.kind, "prefix": token.prefix, "scopes": token.scopes,
            "user": token.user.get_username(),
            "expires_at": token.expires_at.isoformat() if token.expires_at else None}
