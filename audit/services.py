"""The one way into the audit trail: `record(...)`, called inside the transaction of the
change it records, so a change never commits without its row and a rolled-back change
leaves none.

Extension point: `settings.AUDIT_COMMIT_OBSERVERS` lists dotted paths of callables that
receive each new `AuditEvent` after its transaction commits (never for a rolled-back one).
That is how webhooks fire on flag changes while `audit` imports no other app. Observers run
outside any transaction, must not raise (a failure is logged and the next observer still
runs), and cost `record()` no query: it only schedules them.

Nothing is cut silently. A reason longer than TEXT_LIMITS["audit_reason"] raises (the services
refuse what people type at its own, smaller limit, before writing anything); a summary or a
label snapshot built by code that is longer than its column is shortened with a visible "…".
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone
from django.utils.ipv6 import clean_ipv6_address
from django.utils.module_loading import import_string

from audit.chain import ADVISORY_LOCK_KEY, GENESIS, HASHED_FIELDS, canonical_json, row_hash
from audit.constants import TEXT_LIMITS, ActorKind, AuditAction
from audit.context import current_context
from audit.models import AuditEvent
from audit.validators import check_text_limit, shortened

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnonymousActor:
    """Someone not signed in, e.g. a failed login; `name` is what they typed."""

    name: str

    def __str__(self) -> str:
        return f"{self.name} (not signed in)"


@dataclass(frozen=True)
class SdkKeyActor:
    """An application acting with an SDK key (telemetry, later)."""

    prefix: str

    def __str__(self) -> str:
        return f"sdk-key:{self.prefix}"


@dataclass(frozen=True)
class AuditTarget:
    """A target that is not a model instance (or no longer exists)."""

    target_type: str
    pk: Any
    label: str

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class SystemActor:
    """The actor for background jobs and maintenance commands."""

    name: str

    def __str__(self) -> str:
        return f"system:{self.name}"


Actor = AbstractBaseUser | SystemActor | AnonymousActor | SdkKeyActor


class Labelled(Protocol):
    pk: Any

    def __str__(self) -> str: ...


class AuditOutsideTransactionError(RuntimeError):
    """record() was called outside transaction.atomic: the row could outlive a failed change."""


def actor_label(actor: Actor) -> str:
    if not isinstance(actor, AbstractBaseUser):
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
    # Refused, never cut: the row must say what the person said. Raising here rolls back the
    # change it would have recorded.
    check_text_limit("reason", reason, limit="audit_reason")
    if isinstance(actor, SystemActor):
        kind, user = ActorKind.SYSTEM, None
    elif isinstance(actor, SdkKeyActor):
        kind, user = ActorKind.SDK_KEY, None
    elif isinstance(actor, AnonymousActor):
        kind, user = ActorKind.USER, None
    elif isinstance(actor, AbstractBaseUser):
        kind, user = ActorKind.USER, actor
    else:
        raise TypeError(f"Unsupported audit actor: {actor!r}")
    ctx = current_context()
    target_type = target.target_type if isinstance(target, AuditTarget) else target._meta.label_lower  # type: ignore[attr-defined]
    event = AuditEvent(
        created_at=None,
        actor=user,
        actor_label=shortened(actor_label(actor) + (f" via {ctx.via}" if ctx.via else ""), 200),
        actor_kind=kind,
        action=AuditAction(action),
        target_type=target_type,
        target_id=shortened(str(target.pk), 64),
        target_label=shortened(str(target), 300),
        project_id=project.pk if project else None,
        project_label=shortened(str(project), 200) if project else "",
        environment_id=environment.pk if environment else None,
        environment_label=shortened(str(environment), 200) if environment else "",
        flag_id=flag.pk if flag else None,
        before=before,
        after=after,
        summary=shortened(summary or AuditAction(action).label, TEXT_LIMITS["summary"]),
        reason=reason,
        correlation_id=ctx.correlation_id,
        request_ip=_normalised_ip(ctx.request_ip),
        user_agent=ctx.user_agent,
        change_request_id=change_request_id,
    )
    # Round-trip before/after through their stored form, so the hash covers exactly what the
    # database will hand back to verify_audit.
    event.before = _stored_form(before)
    event.after = _stored_form(after)
    _lock_chain()
    # Stamped under the lock, so time never runs backwards along the id order.
    event.created_at = timezone.now()
    event.prev_hash = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first() or GENESIS
    event.hash = row_hash({name: getattr(event, name) for name in HASHED_FIELDS}, event.prev_hash)
    event.save()
    _announce(event)
    observers = getattr(settings, "AUDIT_COMMIT_OBSERVERS", ())
    if observers:
        _observe_after_commit(tuple(observers), event)
    return event


LIVE_CHANNEL = "featureops_live"
_live_listeners: list[Callable[[str], object]] = []


def _announce(event: AuditEvent) -> None:
    """Tell open consoles (featureops_site/live.py) that something of a project changed, when
    (and only if) this transaction commits: PostgreSQL's NOTIFY, or, on other databases, the
    listeners of this process (the development server runs console and streams in one)."""
    if event.project_id is None:
        return
    payload = json.dumps([event.project_id, event.target_type, event.target_id, event.change_request_id])
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [LIVE_CHANNEL, payload])
    elif _live_listeners:
        transaction.on_commit(lambda: [listener(payload) for listener in list(_live_listeners)], robust=True)


def listen_in_process(listener: Callable[[str], object]) -> None:
    """Receive the announcements of this process's commits (databases without NOTIFY)."""
    _live_listeners.append(listener)


def _observe_after_commit(paths: tuple[str, ...], event: AuditEvent) -> None:
    transaction.on_commit(lambda: _run_observers(paths, event), robust=True)


@functools.cache
def _resolve_observer(path: str) -> Callable[[AuditEvent], object]:
    return import_string(path)


def _run_observers(paths: tuple[str, ...], event: AuditEvent) -> None:
    for path in paths:
        try:
            _resolve_observer(path)(event)
        except Exception:
            logger.exception("Audit observer %s failed on audit event %s.", path, event.pk)


def _lock_chain() -> None:
    """Serialise appends until this transaction ends, so the chain never forks."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])


def _stored_form(value: Any) -> Any:
    return None if value is None else json.loads(canonical_json(value))


def _normalised_ip(address: str | None) -> str | None:
    """The address exactly as the IP column will store it (Django cleans IPv6, keeping
    IPv4-mapped addresses as ::ffff:a.b.c.d), so the hash covers what verify_audit reads."""
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    return clean_ipv6_address(str(parsed)) if parsed.version == 6 else str(parsed)
