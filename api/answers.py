"""Answers several routers give: a change request in brief, and 202 for a change held for approval."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Status

from rollouts.change_control.approving import valid_approvals
from rollouts.change_control.wording import change_request_url
from rollouts.models import ChangeRequest


def change_request_brief(request: HttpRequest, change_request: ChangeRequest,
                         approvals: int | None = None) -> dict[str, Any]:
    """`approvals`: the request's valid approvals when the caller counted them for a whole page
    (`valid_approvals_of`); counted here otherwise."""
    return {
        "id": change_request.pk, "kind": change_request.kind, "status": change_request.status,
        "project": change_request.project.key,
        "flag": change_request.flag.key if change_request.flag_id else None,
        "segment": change_request.segment.key if change_request.segment_id else None,
        "environment": change_request.environment.key if change_request.environment_id else None,
        "requester": change_request.requester_label, "reason": change_request.reason,
        "reasons": change_request.reasons, "escalation": change_request.escalation,
        "required_approvals": change_request.required_approvals, "approvals": valid_approvals(change_request) if approvals is None else approvals,
        "version": change_request.diff_hash, "scheduled_for": change_request.scheduled_for,
        "created_at": change_request.created_at,
        "url": request.build_absolute_uri(change_request_url(change_request)),
    }


def held(request: HttpRequest, change_request: ChangeRequest) -> Status:
    """202 Accepted: the change waits for approval in the change request it opened."""
    return Status(202, change_request_brief(request, change_request))
