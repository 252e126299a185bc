"""The auditor's explorer and each flag's History tab: one component over audit.selectors.

Reading only: nothing here needs a write permission. The explorer covers the projects where
the user holds view_audit (auditors, project admins), exports need export_audit; the rows that
belong to no project (sign-ins, accounts, whole-trail exports) are added for those who hold
view_account_audit (auditors). A flag's History tab is open to anyone who may view the flag.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from audit.constants import AuditAction
from audit.diff import readable_diff
from audit.export import EXPORT_FIELDS, csv_rows, jsonl_rows
from audit.models import AuditEvent
from audit.naming import TargetName, target_names
from audit.selectors import ANONYMOUS_ACTOR, SYSTEM_ACTOR, AuditFilters, audit_page, iter_events
from audit.services import AuditTarget, record
from flags import permissions
from flags.models import Environment, Flag, Project
from flags.permissions import audit_project_ids, can_read_audit_event, sees_account_events
from flags.shortcuts import project_page, refused


def _int(value: str | None) -> int | None:
    """A positive id from the query string; anything else (other digits, huge values) is no id."""
    if not value or not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


def _date(value: str | None) -> datetime.date | None:
    try:
        return datetime.date.fromisoformat(value) if value else None
    except ValueError:
        return None


ACCOUNT_SCOPE = "account"  # ?project=account: the rows that belong to no project


def _filters(request: HttpRequest, scope: frozenset[int], *, account_events: bool = False,
             **fixed: Any) -> AuditFilters:
    get = request.GET
    values: dict[str, Any] = {
        "account_only": get.get("project") == ACCOUNT_SCOPE,
        "project": _int(get.get("project")), "environment": _int(get.get("environment")),
        "flag": _int(get.get("flag")), "actor": get.get("actor", "")[:20].replace("\x00", ""),
        "action": get.get("action", "") if get.get("action", "") in AuditAction.values else "",
        "date_from": _date(get.get("from")), "date_to": _date(get.get("to")), "q": get.get("q", "").replace("\x00", "").strip()[:200],
    }
    values.update(fixed)
    return AuditFilters(project_ids=scope, account_events=account_events, **values)


def _choices(scope: frozenset[int], *, account_events: bool) -> dict[str, Any]:
    """Options for the filter form: a handful of small queries, whatever the trail's size."""
    members = Q(memberships__project_id__in=scope)
    if account_events:
        members |= Q(is_superuser=True)  # who changes accounts and groups in the admin
    users = get_user_model().objects.filter(members).distinct().order_by("username")
    actors = [(str(u.pk), u.get_full_name() or u.get_username()) for u in users] + [(SYSTEM_ACTOR, "System jobs")]
    if account_events:
        actors.append((ANONYMOUS_ACTOR, "Not signed in (failed sign-ins)"))
    return {
        "account_events": account_events,
        "projects": Project.objects.filter(pk__in=scope).order_by("name"),
        "environments": Environment.objects.filter(project_id__in=scope).select_related("project"),
        "flags": Flag.objects.filter(project_id__in=scope).order_by("key").only("pk", "key"),
        "actors": actors,
        "actions": AuditAction.choices,
    }


# Rows whose reason is what a person wrote to someone: shown as their comment.
COMMENTED = {AuditAction.CHANGE_REQUEST_APPROVED, AuditAction.CHANGE_REQUEST_REJECTED}


@dataclass(frozen=True)
class AuditRow:
    """One row of the trail as people read it: its target by today's name (with a link), and
    the words people wrote (a comment, a reason), shortened in the table, whole in the detail."""

    event: AuditEvent
    target: TargetName

    @property
    def comment(self) -> str:
        after = self.event.after
        if self.event.action == AuditAction.CHANGE_REQUEST_COMMENTED and isinstance(after, dict):
            return str(after.get("comment") or "")
        return self.event.reason if self.event.action in COMMENTED else ""

    @property
    def reason(self) -> str:
        return "" if self.event.action in COMMENTED else self.event.reason

    @property
    def has_changes(self) -> bool:
        return self.event.before is not None or self.event.after is not None

    @property
    def has_detail(self) -> bool:
        return self.has_changes or bool(self.event.reason)


def audit_rows(events: list[AuditEvent]) -> list[AuditRow]:
    names = target_names(events)  # one query per target type on the page
    return [AuditRow(event=event, target=names[event.pk]) for event in events]


def _page_context(request: HttpRequest, filters: AuditFilters, base_url: str) -> dict[str, Any]:
    page = audit_page(filters, before=_int(request.GET.get("before")))
    query = request.GET.copy()
    query.pop("before", None)
    return {"page": page, "rows": audit_rows(page.events), "filters": filters, "base_url": base_url,
            "query": query.urlencode()}


@login_required
@require_GET
@vary_on_headers("HX-Request")
def audit_explorer(request: HttpRequest) -> HttpResponse:
    if refusal := refused(request, permissions.BROWSE_AUDIT):
        return refusal
    scope = audit_project_ids(request.user)
    account_events = sees_account_events(request.user)
    filters = _filters(request, scope, account_events=account_events)
    context = {**_page_context(request, filters, request.path), **_choices(scope, account_events=account_events),
               "get": request.GET}
    if request.htmx and not request.htmx.history_restore_request:
        response = render(request, "audit/_audit_table.html", context)
        # The export links carry the filter too: swap them out of band.
        response.write(render_to_string("audit/_audit_exports.html", {**context, "oob": True}, request))
        return response
    return render(request, "audit/explorer.html", context)


@project_page("GET")
def flag_history(request: HttpRequest, project: Project, flag_key: str) -> HttpResponse:
    flag = get_object_or_404(Flag, project=project, key=flag_key)
    filters = _filters(request, frozenset({project.pk}), project=project.pk, flag=flag.pk, environment=None,
                       account_only=False)
    return render(request, "audit/_audit_table.html", _page_context(request, filters, request.path))


@login_required
@require_GET
def audit_event_detail(request: HttpRequest, event_id: int) -> HttpResponse:
    event = get_object_or_404(AuditEvent, pk=event_id)
    if not can_read_audit_event(request.user, event):
        raise Http404("No such event.")
    row = audit_rows([event])[0]
    return render(request, "audit/_audit_detail.html",
                  {"event": event, "row": row, "changes": readable_diff(event.before, event.after)})


@login_required
@require_GET
def audit_export(request: HttpRequest, fmt: str) -> HttpResponse:
    if fmt not in ("csv", "jsonl"):
        raise Http404("Exports are .csv or .jsonl.")
    if refusal := refused(request, permissions.EXPORT_AUDIT):
        return refusal
    scope = audit_project_ids(request.user, "export_audit")
    # Account-level rows go into the export for whoever sees them in the explorer.
    filters = _filters(request, scope, account_events=sees_account_events(request.user))
    described = {k: v for k, v in request.GET.items() if k != "before" and v}
    with transaction.atomic():
        # The export is itself recorded; it covers the trail as it stood just before.
        project = Project.objects.filter(pk=filters.project, pk__in=scope).first() if filters.project else None
        event = record(actor=request.user, action=AuditAction.AUDIT_EXPORTED,
                       target=AuditTarget("audit.export", fmt, f"Audit export ({fmt.upper()})"), project=project,
                       after={"format": fmt, "filters": described}, summary=f"Exported the audit trail as {fmt.upper()}")
    rows = iter_events(filters, up_to=event.pk - 1, fields=EXPORT_FIELDS)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    if fmt == "csv":
        response = StreamingHttpResponse(csv_rows(rows), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(jsonl_rows(rows), content_type="application/x-ndjson; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt}"'
    return response
