"""Change requests: the list (the approver's inbox among its filters), one request with its
proposal in words and its discussion, and the decisions on it: comment, approve, reject, apply,
schedule, cancel.

Each action asks the permission rule the console's view asks (`flags.permissions`), then calls
the change-control service, which asks again under the request's row lock. A request's ETag is
`"cr-<first 16 hex of its diff hash>"`: the version approvals bind to. Approving with
`If-Match` refuses (412) when the request was edited since it was read, so nobody approves a
version they have not seen."""

from __future__ import annotations

import datetime
import re
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Field, Path, Query, Router, Schema

from api.answers import change_request_brief
from api.auth import needs, token_of
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode, page
from api.problems import ApiError, problem
from api.schemas import ChangeRequestBrief, IsoAwareDateTime, answers
from flags import permissions
from flags.models import Project
from flags.shortcuts import project_for
from rollouts import selectors
from rollouts.change_control import applying, approving, wording
from rollouts.change_control.binding import locked
from rollouts.models import ChangeRequest, ChangeRequestStatus

router = Router(tags=["change-requests"])
T = TypeVar("T")
_ETAG = re.compile(r'^\s*(?:W/)?"cr-([0-9a-f]{16})"\s*$')
SCHEDULE_HORIZON = datetime.timedelta(days=365)  # as the console's schedule form
IdPath = Path(..., ge=1, le=2**63 - 1)  # a row id within bigint (beyond it a query would fail), shared


# --- shapes ----------------------------------------------------------------------------------

class ChangeRequestPage(Schema):
    items: list[ChangeRequestBrief]
    next_cursor: str | None


class ChangeRequestFilters(Schema):
    status: ChangeRequestStatus | None = None
    flag: str = Field("", max_length=100, description="A flag's key.")
    environment: str = Field("", max_length=100, description="An environment's key.")
    waiting_for_me: bool = Field(False, description="Only pending requests the token's account may approve, "
                                                    "opened by someone else, not yet decided on (the inbox).")
    cursor: str | None = Field(None, max_length=500)
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class ChangeRequestLine(Schema):
    text: str
    escalates: bool = Field(description="The riskiest variation an audience can reach goes up.")


class ChangeRequestDiscussionEntry(Schema):
    kind: str = Field(description="approve, reject or comment.")
    author: str
    body: str
    created_at: datetime.datetime
    current_version: bool | None = Field(description="Decisions: whether they bind the request's current version "
                                                     "(an edit discards earlier approvals). Null for comments.")


class ChangeRequestConflict(Schema):
    summary: str
    lines: list[ChangeRequestLine]


class ChangeRequestOut(ChangeRequestBrief):
    base_version: int
    base_state: dict[str, Any]
    proposed: dict[str, Any]
    lines: list[ChangeRequestLine] = Field(description="What the request changes, in words.")
    conflict: ChangeRequestConflict | None
    shortfall: str = Field(description="Why the request can never reach its approvals, or empty.")
    decided_at: datetime.datetime | None
    applied_at: datetime.datetime | None
    discussion: list[ChangeRequestDiscussionEntry] = Field(description="Decisions and comments in time order.")


class ChangeRequestCommentIn(Schema):
    body: str


class ChangeRequestDecisionIn(Schema):
    comment: str = Field("")


class ChangeRequestScheduleIn(Schema):
    when: IsoAwareDateTime = Field(description="When to apply it: an ISO 8601 time with its zone, within a year.")


class ChangeRequestCancelIn(Schema):
    reason: str = Field("")


# --- helpers ---------------------------------------------------------------------------------

def needs_one_of(request: HttpRequest, *scopes: str) -> None:
    """Refuse a token that holds none of `scopes` (403 `insufficient_scope`): for actions that
    people of several roles take (commenting, acknowledging), each through their own scope."""
    held = token_of(request).scopes
    if not set(scopes) & set(held):
        raise ApiError(403, "insufficient_scope", f"This token needs one of the scopes {', '.join(scopes)}; "
                                                  f"its scopes: {', '.join(held)}.")


def newest_first(queryset: QuerySet[T], *, cursor: str | None, limit: int) -> tuple[list[T], str | None]:
    """`api.pagination.page` by id, newest first. The page checks a cursor's shape, not that its
    value is an id: one that is not is refused here as a foreign cursor (400), before a query."""
    if cursor:
        (after,) = decode(cursor, 1)
        if isinstance(after, bool) or not isinstance(after, int) or not 0 < after < 2**63:
            raise ApiError(400, "invalid_cursor", "This cursor is not one the API gave out; start from the first page.")
    return page(queryset, order=("-id",), cursor=cursor, limit=limit, key=lambda row: [row.pk])


def change_request_etag(change_request: ChangeRequest) -> str:
    return f'"cr-{change_request.diff_hash[:16]}"'


def _expected_hash(request: HttpRequest) -> str | None:
    """The diff hash prefix If-Match names; None when absent or `*`; 412 for a tag of no version."""
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    match = _ETAG.match(header)
    if not match:
        raise ApiError(412, "stale_version", "If-Match names no version of this change request: send the ETag of "
                                             "your last read (e.g. \"cr-0123456789abcdef\").")
    return match.group(1)


def _change_request(project: Project, pk: int) -> ChangeRequest:
    try:
        return selectors.change_request_page(project, pk)
    except ChangeRequest.DoesNotExist as exc:
        raise Http404("No such change request.") from exc


def _answer(request: HttpRequest, response: HttpResponse, project: Project, pk: int) -> dict[str, Any]:
    """The request as the action left it, with its ETag."""
    change_request = _change_request(project, pk)
    response["ETag"] = change_request_etag(change_request)
    return change_request_brief(request, change_request)


def _lines(lines: list[Any]) -> list[dict[str, Any]]:
    return [{"text": line.text, "escalates": line.escalates} for line in lines]


def _discussion(change_request: ChangeRequest) -> list[dict[str, Any]]:
    """Decisions and comments in time order (a decision first when both share a moment)."""
    entries = [{"kind": approval.decision, "author": approval.approver.get_username(), "body": approval.comment,
                "created_at": approval.created_at, "current_version": approval.diff_hash == change_request.diff_hash}
               for approval in change_request.approvals.all()]
    entries += [{"kind": "comment", "author": comment.author_label, "body": comment.body,
                 "created_at": comment.created_at, "current_version": None}
                for comment in change_request.comments.all()]
    return sorted(entries, key=lambda entry: entry["created_at"])


# --- reading ---------------------------------------------------------------------------------

@router.get("/projects/{project_key}/change-requests", response=answers({200: ChangeRequestPage}),
            summary="Change requests, newest first; `waiting_for_me=true` is the approver's inbox")
def change_request_list(request: HttpRequest, filters: Query[ChangeRequestFilters], project_key: str) -> Any:
    needs(request, "read")
    project = project_for(request, project_key)
    if filters.waiting_for_me:
        requests = selectors.waiting_for(request.user).filter(project=project)
    else:
        requests = ChangeRequest.objects.filter(project=project).select_related(
            "project", "flag", "segment", "environment", "requester")
    if filters.status:
        requests = requests.filter(status=filters.status)
    if filters.flag:
        requests = requests.filter(flag__key=filters.flag)
    if filters.environment:
        requests = requests.filter(environment__key=filters.environment)
    rows, next_cursor = newest_first(requests, cursor=filters.cursor, limit=filters.limit)
    counts = approving.valid_approvals_of(rows)
    return {"items": [change_request_brief(request, row, counts[row.pk]) for row in rows], "next_cursor": next_cursor}


@router.get("/projects/{project_key}/change-requests/{change_request_id}", response=answers({200: ChangeRequestOut}),
            summary="One change request: what it changes in words, and its discussion; its ETag is its version")
def change_request_get(request: HttpRequest, response: HttpResponse, project_key: str,
                       change_request_id: int = IdPath) -> Any:
    needs(request, "read")
    change_request = _change_request(project_for(request, project_key), change_request_id)
    conflict = None
    if change_request.conflict:
        conflict = {"summary": change_request.conflict.get("summary", ""),
                    "lines": _lines(wording.describe_conflict(change_request))}
    response["ETag"] = change_request_etag(change_request)
    return {
        **change_request_brief(request, change_request),
        "base_version": change_request.base_version, "base_state": change_request.base_state,
        "proposed": change_request.proposed, "lines": _lines(wording.describe_request(change_request)),
        "conflict": conflict, "shortfall": approving.approval_shortfall(change_request),
        "decided_at": change_request.decided_at, "applied_at": change_request.applied_at,
        "discussion": _discussion(change_request),
    }


# --- deciding --------------------------------------------------------------------------------

@router.post("/projects/{project_key}/change-requests/{change_request_id}/comments",
             response=answers({200: ChangeRequestBrief}, write=True), summary="Comment on a change request")
def change_request_comment(request: HttpRequest, response: HttpResponse, payload: ChangeRequestCommentIn,
                           project_key: str, change_request_id: int = IdPath) -> Any:
    needs_one_of(request, "write", "approve", "operate")
    project = project_for(request, project_key)
    change_request = _change_request(project, change_request_id)
    permissions.COMMENT.require(request.user, change_request)
    approving.change_request_comment(change_request=change_request, body=payload.body, actor=request.user)
    return _answer(request, response, project, change_request_id)


@router.post("/projects/{project_key}/change-requests/{change_request_id}/approve",
             response=answers({200: ChangeRequestBrief}, write=True),
             summary="Approve a change request; If-Match with its ETag refuses a version edited since (412)")
def change_request_approve(request: HttpRequest, response: HttpResponse, payload: ChangeRequestDecisionIn,
                           project_key: str, change_request_id: int = IdPath) -> Any:
    needs(request, "approve")
    project = project_for(request, project_key)
    change_request = _change_request(project, change_request_id)
    permissions.APPROVE.require(request.user, change_request)
    expected = _expected_hash(request)
    with transaction.atomic():
        # Compared under the row lock the service takes again: an edit cannot slip in between.
        current = locked(change_request)
        if expected is not None and not current.diff_hash.startswith(expected):
            raise ApiError(412, "stale_version", "This change request was edited since you read it (it is now "
                                                 f"{change_request_etag(current)}): read it again and approve what it "
                                                 "proposes now.")
        approving.change_request_approve(change_request=current, actor=request.user, comment=payload.comment)
    return _answer(request, response, project, change_request_id)


@router.post("/projects/{project_key}/change-requests/{change_request_id}/reject",
             response=answers({200: ChangeRequestBrief}, write=True), summary="Reject a change request (closes it)")
def change_request_reject(request: HttpRequest, response: HttpResponse, payload: ChangeRequestDecisionIn,
                          project_key: str, change_request_id: int = IdPath) -> Any:
    needs(request, "approve")
    project = project_for(request, project_key)
    change_request = _change_request(project, change_request_id)
    permissions.REJECT.require(request.user, change_request)
    approving.change_request_reject(change_request=change_request, actor=request.user, comment=payload.comment)
    return _answer(request, response, project, change_request_id)


@router.post("/projects/{project_key}/change-requests/{change_request_id}/apply",
             response=answers({200: ChangeRequestBrief}, write=True),
             summary="Apply an approved change request; 409 `conflicted` when what it changes moved since")
def change_request_apply(request: HttpRequest, response: HttpResponse, project_key: str,
                         change_request_id: int = IdPath) -> Any:
    needs(request, "write")
    project = project_for(request, project_key)
    change_request = _change_request(project, change_request_id)
    permissions.APPLY.require(request.user, change_request)
    result = applying.change_request_apply(change_request=change_request, actor=request.user)
    if result.status == ChangeRequest.Status.CONFLICTED:
        # Answered, not raised: the request stays conflicted (and audited as such).
        summary = (result.conflict or {}).get("summary") or "Not applied: what it changes moved since it was made"
        return problem(request, 409, "conflicted", f"{summary}. Nothing was applied; the request is conflicted: "
                                                   "open a new one from the current state.")
    return _answer(request, response, project, change_request_id)


@router.post("/projects/{project_key}/change-requests/{change_request_id}/schedule",
             response=answers({200: ChangeRequestBrief}, write=True),
             summary="Schedule an approved change request; it is applied then, after the same checks")
def change_request_schedule(request: HttpRequest, response: HttpResponse, payload: ChangeRequestScheduleIn,
                            project_key: str, change_request_id: int = IdPath) -> Any:
    needs(request, "write")
    project = project_for(request, project_key)
    change_request = _change_request(project, change_request_id)
    permissions.SCHEDULE.require(request.user, change_request)
    if payload.when <= timezone.now():
        raise ValidationError({"when": "Pick a time in the future."})
    if payload.when > timezone.now() + SCHEDULE_HORIZON:
        raise ValidationError({"when": "Pick a time within a year."})
    applying.change_request_schedule(change_request=change_request, when=payload.when, actor=request.user)
    return _answer(request, response, project, change_request_id)


@router.post("/projects/{project_key}/change-requests/{change_request_id}/cancel",
             response=answers({200: ChangeRequestBrief}, write=True), summary="Cancel one's own change request")
def change_request_cancel(request: HttpRequest, response: HttpResponse, payload: ChangeRequestCancelIn,
                          project_key: str, change_request_id: int = IdPath) -> Any:
    needs(request, "write")
    project = project_for(request, project_key)
    change_request = _change_request(project, change_request_id)
    permissions.CANCEL_REQUEST.require(request.user, change_request)
    applying.change_request_cancel(change_request=change_request, actor=request.user, reason=payload.reason)
    return _answer(request, response, project, change_request_id)

