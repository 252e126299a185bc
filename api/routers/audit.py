"""The audit trail: the explorer's rows and filters, one event with its changes, and the export.

Who reads what is the console's rule (flags/audit_views.py): the explorer covers the projects
where the token's user holds view_audit (auditors, project admins), the export those where it
holds export_audit; the rows that belong to no project (sign-ins, accounts, whole-trail exports)
are added for those who see account events (auditors). One event is also open to whoever may
view its flag's project, as the console's History tab shows it. Filters name projects,
environments and flags by key and actors by username; they select rows exactly as the
explorer's do (audit.selectors). An export is itself an audit row, written before the rows are
read, and covers the trail as it stood just before it."""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Any, Literal

from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import Http404, HttpRequest, StreamingHttpResponse
from django.utils import timezone
from ninja import Field, Query, Router, Schema
from pydantic import BeforeValidator

from api.auth import needs
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, page
from api.problems import ApiError
from api.schemas import answers
from audit.constants import AuditAction
from audit.diff import diff
from audit.export import EXPORT_FIELDS, csv_rows, jsonl_rows
from audit.models import AuditEvent
from audit.selectors import ANONYMOUS_ACTOR, SYSTEM_ACTOR, AuditFilters, filtered_events, iter_events
from audit.services import AuditTarget, record
from flags import permissions
from flags.models import Environment, Flag, Project
from flags.permissions import audit_project_ids, can_read_audit_event, sees_account_events

router = Router(tags=["audit"])
ACCOUNT_SCOPE = "account"  # ?project=account: the rows that belong to no project
KEY_OR_NOTHING = r"^([a-z0-9][a-z0-9_-]{0,99})?$"  # flags.constants.KEY_PATTERN, or no filter
NO_USER = "0"  # ids start at 1: an actor filter that matches no row
EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
EXPORT_DOC = {"responses": {200: {
    "description": "The matching rows, newest first, streamed: CSV with a header row (`format=csv`) or one JSON "
                   "object per line (`format=jsonl`).",
    "content": {"text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}}},
}}}


def _iso_day(value: Any) -> Any:
    # pydantic would also read "0" or "1700000000" as a day (a Unix time): only YYYY-MM-DD is one.
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("Use a day such as 2026-01-31.")
    return value


Day = Annotated[datetime.date, BeforeValidator(_iso_day)]
EventId = Annotated[int, Field(ge=1, le=2**63 - 1)]  # a bigint id: larger ones name nothing (422)


# --- shapes ----------------------------------------------------------------------------------

class AuditEventOut(Schema):
    id: int
    created_at: datetime.datetime
    actor_id: int | None
    actor_label: str = Field(description="Who, as they were named then; “… via API token <name> (<prefix>…)” for "
                                         "changes made through the API.")
    actor_kind: str
    action: str
    project_id: int | None = Field(description="None for account-level rows.")
    project_label: str
    environment_id: int | None
    environment_label: str
    flag_id: int | None
    target_type: str
    target_id: str
    target_label: str
    summary: str
    reason: str
    before: Any
    after: Any
    correlation_id: str
    request_ip: str | None
    change_request_id: int | None
    hash: str


class FieldChange(Schema):
    path: str
    before: str
    after: str
    kind: Literal["changed", "added", "removed"]


class AuditEventDetail(AuditEventOut):
    prev_hash: str
    changes: list[FieldChange] = Field(description="Field-by-field differences between before and after.")


class AuditPage(Schema):
    items: list[AuditEventOut]
    next_cursor: str | None


class AuditQuery(Schema):
    """The explorer's filters; they combine."""

    project: str = Field("", max_length=100, pattern=KEY_OR_NOTHING,
                         description="A project key, or `account` for the rows that belong to no project.")
    environment: str = Field("", max_length=100, pattern=KEY_OR_NOTHING,
                             description="An environment key of `project`.")
    flag: str = Field("", max_length=100, pattern=KEY_OR_NOTHING, description="A flag key of `project`.")
    actor: str = Field("", max_length=150, description="A username, `system` (background jobs) or `anonymous` "
                                                       "(not signed in: failed sign-ins).")
    action: AuditAction | Literal[""] = ""
    date_from: Day | None = Field(None, alias="from",
                                  description="From this day (the site's time zone, UTC unless set), inclusive.")
    date_to: Day | None = Field(None, alias="to", description="To this day, inclusive.")
    q: str = Field("", max_length=200, description="Text in the summary or the reason.")


class AuditListQuery(AuditQuery):
    cursor: str | None = Field(None, max_length=500)
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class ExportQuery(AuditQuery):
    format: Literal["csv", "jsonl"]


# --- helpers -----------------------------------------------------------------------------------

def _text(value: str) -> str:
    return value.replace("\x00", "").strip()


def _filters(query: AuditQuery, scope: frozenset[int], *, account_events: bool) -> tuple[AuditFilters, Project | None]:
    """The selectors' filters for `query`, and the project it names. A project outside the
    reader's scope is a 404, as one that does not exist; an unknown username matches no row."""
    project = environment = flag = None
    account_only = query.project == ACCOUNT_SCOPE
    if query.project and not account_only:
        project = Project.objects.filter(key=query.project, pk__in=scope).first()
        if project is None:
            raise Http404("No such project in the audit trail you may read.")
    if (query.environment or query.flag) and project is None:
        raise ApiError(422, "invalid", "Filtering by environment or flag needs the project they belong to.",
                       errors=[{"path": "project", "message": "Name the project (its key)."}])
    if query.environment:
        environment = Environment.objects.filter(project=project, key=query.environment).first()
        if environment is None:
            raise Http404("No such environment.")
    if query.flag:
        flag = Flag.objects.filter(project=project, key=query.flag).first()
        if flag is None:
            raise Http404("No such flag.")
    actor = _text(query.actor)
    if actor and actor not in (SYSTEM_ACTOR, ANONYMOUS_ACTOR):
        user_id = get_user_model().objects.filter(username=actor).values_list("pk", flat=True).first()
        actor = str(user_id) if user_id is not None else NO_USER
    filters = AuditFilters(
        project_ids=scope, account_events=account_events, account_only=account_only,
        project=project.pk if project else None, environment=environment.pk if environment else None,
        flag=flag.pk if flag else None, actor=actor, action=query.action, date_from=query.date_from,
        date_to=query.date_to, q=_text(query.q),
    )
    return filters, project


def _event_out(event: AuditEvent) -> dict[str, Any]:
    return {"id": event.pk, "created_at": event.created_at, "actor_id": event.actor_id,
            "actor_label": event.actor_label, "actor_kind": event.actor_kind, "action": event.action,
            "project_id": event.project_id, "project_label": event.project_label,
            "environment_id": event.environment_id, "environment_label": event.environment_label,
            "flag_id": event.flag_id, "target_type": event.target_type, "target_id": event.target_id,
            "target_label": event.target_label, "summary": event.summary, "reason": event.reason,
            "before": event.before, "after": event.after, "correlation_id": str(event.correlation_id),
            "request_ip": event.request_ip, "change_request_id": event.change_request_id, "hash": event.hash}


# --- endpoints ---------------------------------------------------------------------------------

@router.get("/audit/events", response=answers({200: AuditPage}),
            summary="The audit trail, newest first, filtered as the console's explorer")
def audit_event_list(request: HttpRequest, query: Query[AuditListQuery]) -> Any:
    needs(request, "read")
    permissions.BROWSE_AUDIT.require(request.user)
    filters, _ = _filters(query, audit_project_ids(request.user), account_events=sees_account_events(request.user))
    events, next_cursor = page(filtered_events(filters), order=("-id",), cursor=query.cursor, limit=query.limit,
                               key=lambda event: [event.pk])
    return {"items": [_event_out(event) for event in events], "next_cursor": next_cursor}


@router.get("/audit/events/{event_id}", response=answers({200: AuditEventDetail}),
            summary="One audit event with its field-by-field changes")
def audit_event_get(request: HttpRequest, event_id: EventId) -> Any:
    needs(request, "read")
    event = AuditEvent.objects.filter(pk=event_id).first()
    if event is None or not can_read_audit_event(request.user, event):
        raise Http404("No such event.")
    changes = [{"path": c.path, "before": c.before, "after": c.after, "kind": c.kind}
               for c in diff(event.before, event.after)]
    return {**_event_out(event), "prev_hash": event.prev_hash, "changes": changes}


@router.get("/audit/export", response=answers({200: None}), openapi_extra=EXPORT_DOC,
            summary="Export the filtered trail as CSV or JSON lines (the export is itself recorded)")
def audit_export(request: HttpRequest, query: Query[ExportQuery]) -> Any:
    needs(request, "read")
    permissions.EXPORT_AUDIT.require(request.user)
    scope = audit_project_ids(request.user, "export_audit")
    # Account-level rows go into the export for whoever sees them in the explorer.
    filters, project = _filters(query, scope, account_events=sees_account_events(request.user))
    fmt = query.format
    described = {name: str(value) for name, value in query.dict(by_alias=True, exclude={"format"}).items() if value}
    with transaction.atomic():
        event = record(actor=request.user, action=AuditAction.AUDIT_EXPORTED,
                       target=AuditTarget("audit.export", fmt, f"Audit export ({fmt.upper()})"), project=project,
                       after={"format": fmt, "filters": described},
                       summary=f"Exported the audit trail as {fmt.upper()}")
    rows = iter_events(filters, up_to=event.pk - 1, fields=EXPORT_FIELDS)
    response = StreamingHttpResponse(csv_rows(rows) if fmt == "csv" else jsonl_rows(rows),
                                     content_type=EXPORT_TYPES[fmt])
    response["Content-Disposition"] = f'attachment; filename="audit-{timezone.now():%Y%m%d-%H%M%S}.{fmt}"'
    return response
