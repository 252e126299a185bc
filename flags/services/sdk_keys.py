"""Server SDK keys, stored hashed."""

from __future__ import annotations

import hashlib
import secrets

from django.db import transaction
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import Actor, record
from audit.validators import check_text_limit
from flags.models import (
    Environment,
    SdkKey,
)
from flags.services._common import (
    _bump_environments,
    _user_or_none,
)

# --- SDK keys ------------------------------------------------------------------------------


SDK_KEY_PREFIX = "fo_srv_"


def hash_sdk_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@transaction.atomic
def sdk_key_create(*, environment: Environment, name: str, actor: Actor) -> tuple[SdkKey, str]:
    """Create a server SDK key; the raw key is returned once and never stored."""
    raw_key = SDK_KEY_PREFIX + secrets.token_urlsafe(32)
    sdk_key = SdkKey(environment=environment, name=name or "server key", prefix=raw_key[:12],
                     key_hash=hash_sdk_key(raw_key), created_by=_user_or_none(actor))
    sdk_key.full_clean()
    sdk_key.save()
    _bump_environments([environment.pk])  # evaluation processes learn of the key on their next poll
    record(actor=actor, action=AuditAction.SDK_KEY_CREATED, target=sdk_key, project=environment.project,
           environment=environment, after={"name": sdk_key.name, "prefix": sdk_key.prefix})
    return sdk_key, raw_key


@transaction.atomic
def sdk_key_revoke(*, sdk_key: SdkKey, actor: Actor, reason: str = "") -> SdkKey:
    check_text_limit("reason", reason)
    sdk_key = SdkKey.objects.select_for_update(of=("self",)).select_related("environment__project").get(pk=sdk_key.pk)
    if sdk_key.revoked_at:
        return sdk_key
    sdk_key.revoked_at = timezone.now()
    sdk_key.save(update_fields=["revoked_at"])
    _bump_environments([sdk_key.environment_id])  # every process refuses the key within a poll
    record(actor=actor, action=AuditAction.SDK_KEY_REVOKED, target=sdk_key, project=sdk_key.environment.project,
           environment=sdk_key.environment, after={"revoked_at": sdk_key.revoked_at.isoformat()}, reason=reason)
    return sdk_key
