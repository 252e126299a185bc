"""The one way into the audit trail: `record(...)`, called inside the transaction of the
change it records, so a change never commits without its row and a rolled-back change
leaves none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.utils import timezone

from audit.constants import ActorKind, AuditAction
from audit.context import current_context
from audit.models import AuditEvent


@dataclass(frozen=True)
class SystemActor:
    """The actor for background jobs and maintenance commands."""

    name: str

    def __str__(self) -> str:
        return f"system:{self.name}"


Actor = AbstractBaseUser | SystemActor


class Labelled(Protocol):
    pk: Any

    def __str__(self) -> str: ...


class AuditOutsideTransactionError(RuntimeError):
    """record() was called outside transaction.atomic: the row could outlive a failed change."""


def actor_label(actor: Actor) -> str:
    if isinstance(actor, SystemActor):
        return str(actor)
    full_name = actor.get_full_name() if hasattr(actor, "get_full_name") else ""
    username = actor.get_username()
    return f"{full_name} ({username})" if full_name else username


def record(
    *,
    actor: Actor,
    action: AuditAction,
    target: Labelled,
    project: Labelled | None = None,
    environment: Labelled | None = None,
    flag: Labelled | None = None,
    before: Any = None,
    after: Any = None,
    summary: str = "",
    reason: str = "",
    change_request_id: int | None = None,
) -> AuditEvent:
    if not connection.in_atomic_block:
        raise AuditOutsideTransactionError(
            "audit.record() must run inside the transaction of the change it records."
        )
    if isinstance(actor, SystemActor):
        kind, user = ActorKind.SYSTEM, None
    elif isinstance(actor, AbstractBaseUser):
        kind, user = ActorKind.USER, actor
    else:
        raise TypeError(f"Unsupported audit actor: {actor!r}")
    ctx = current_context()
    event = AuditEvent(
        created_at=timezone.now(),
        actor=user,
        actor_label=actor_label(actor)[:200],
        actor_kind=kind,
        action=AuditAction(action),
        target_type=target._meta.label_lower,  # type: ignore[attr-defined]
        target_id=str(target.pk),
        target_label=str(target)[:300],
        project_id=project.pk if project else None,
        project_label=str(project)[:200] if project else "",
        environment_id=environment.pk if environment else None,
        environment_label=str(environment)[:200] if environment else "",
        flag_id=flag.pk if flag else None,
        before=before,
        after=after,
        summary=summary or AuditAction(action).label,
        reason=reason,
        correlation_id=ctx.correlation_id,
        request_ip=ctx.request_ip,
        user_agent=ctx.user_agent,
        change_request_id=change_request_id,
    )
    event.save()
    return event
