"""Reading the audit trail: combinable filters, keyset pages (newest first, no OFFSET) and
constant-memory iteration for exports. Callers pass the project ids the reader may see, and
whether they may see the account-level rows (those with no project: sign-ins, account and
group changes, exports of the whole trail)."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from django.db.models import Q, QuerySet
from django.utils import timezone

from audit.constants import ActorKind
from audit.models import AuditEvent

PAGE_SIZE = 50
EXPORT_CHUNK = 2_000
SYSTEM_ACTOR = "system"
ANONYMOUS_ACTOR = "anonymous"  # someone not signed in: failed and throttled sign-ins


@dataclass(frozen=True)
class AuditFilters:
    project_ids: frozenset[int]  # the reader's scope: rows of other projects are never returned
    account_events: bool = False  # the reader's scope also holds the rows that belong to no project
    account_only: bool = False  # the "Account events" filter: only those rows
    project: int | None = None
    environment: int | None = None
    flag: int | None = None
    actor: str = ""  # a user id, or "system" for background jobs
    action: str = ""
    date_from: datetime.date | None = None
    date_to: datetime.date | None = None
    q: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def active(self) -> bool:
        return any((self.account_only, self.project, self.environment, self.flag, self.actor, self.action,
                    self.date_from, self.date_to, self.q))


def _day_start(day: datetime.date) -> datetime.datetime:
    return timezone.make_aware(datetime.datetime.combine(day, datetime.time.min))


def filtered_events(filters: AuditFilters) -> QuerySet[AuditEvent]:
    scope = Q(project_id__in=filters.project_ids)
    if filters.account_events:
        scope |= Q(project_id__isnull=True)
    events = AuditEvent.objects.filter(scope)
    if filters.account_only:
        events = events.filter(project_id__isnull=True)
    if filters.project is not None:
        events = events.filter(project_id=filters.project)
    if filters.environment is not None:
        events = events.filter(environment_id=filters.environment)
    if filters.flag is not None:
        events = events.filter(flag_id=filters.flag)
    if filters.actor == SYSTEM_ACTOR:
        events = events.filter(actor_kind=ActorKind.SYSTEM)
    elif filters.actor == ANONYMOUS_ACTOR:
        events = events.filter(actor_kind=ActorKind.USER, actor__isnull=True)
    elif filters.actor.isascii() and filters.actor.isdigit() and len(filters.actor) <= 18:
        events = events.filter(actor_id=int(filters.actor))
    if filters.action:
        events = events.filter(action=filters.action)
    # Dates become id bounds too: ids grow with time (rows are stamped under the chain lock),
    # so the planner walks the primary key between them instead of scanning for the range.
    if filters.date_from:
        start = _day_start(filters.date_from)
        first = AuditEvent.objects.filter(created_at__gte=start).order_by("created_at").values_list("id", flat=True).first()
        events = events.filter(created_at__gte=start, id__gte=first) if first else events.none()
    if filters.date_to and filters.date_to < datetime.date.max:
        end = _day_start(filters.date_to + datetime.timedelta(days=1))
        last = AuditEvent.objects.filter(created_at__lt=end).order_by("-created_at").values_list("id", flat=True).first()
        events = events.filter(created_at__lt=end, id__lte=last) if last else events.none()
    if filters.q:
        events = events.filter(Q(summary__icontains=filters.q) | Q(reason__icontains=filters.q))
    return events.order_by("-id")


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    next_before: int | None  # pass as ?before= for the next (older) page


def audit_page(filters: AuditFilters, *, before: int | None = None, size: int = PAGE_SIZE) -> AuditPage:
    events = filtered_events(filters)
    if before is not None:
        events = events.filter(id__lt=before)
    rows = list(events[: size + 1])
    next_before = rows[size - 1].pk if len(rows) > size else None
    return AuditPage(events=rows[:size], next_before=next_before)


def iter_events(filters: AuditFilters, *, up_to: int | None = None, fields: Iterable[str]) -> Iterator[dict]:
    """Every matching row, newest first, in keyset chunks: memory stays flat however many."""
    events = filtered_events(filters).values(*fields)
    if up_to is not None:
        events = events.filter(id__lte=up_to)
    last: int | None = None
    while True:
        chunk = list((events.filter(id__lt=last) if last is not None else events)[:EXPORT_CHUNK])
        if not chunk:
            return
        yield from chunk
        last = chunk[-1]["id"]
