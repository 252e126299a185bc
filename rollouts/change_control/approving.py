"""Deciding on a change request: approvals bound to its diff hash, by people other than the
requester who still hold the approver role; any rejection closes it; comments never change it.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import record
from audit.validators import check_text_limit
from flags.models import ProjectUserObjectPermission
from flags.permissions import APPROVE, COMMENT, REJECT, approvers_other_than, principal_ids
from rollouts.change_control import observers
from rollouts.change_control.binding import locked
from rollouts.change_control.notices import notify_requester, settle_approval_notices
from rollouts.change_control.wording import label
from rollouts.models import Approval, ChangeRequest, ChangeRequestComment

Status = ChangeRequest.Status

REJECT_NEEDS_REASON = "Say why you reject it: the requester reads your reason, and the audit trail keeps it."


def eligible_approvers(change_request: ChangeRequest) -> list[AbstractBaseUser]:
    """Who can approve this request: active holders of the approver role, not its requester."""
    candidates = list(approvers_other_than(change_request.project, change_request.requester_id))
    principals = principal_ids({change_request.requester_id, *(user.pk for user in candidates)})
    requester = principals.get(change_request.requester_id)
    return [user for user in candidates if principals[user.pk] != requester]


def approval_shortfall(change_request: ChangeRequest) -> str:
    """Why this request can never reach its approvals, or "" when it can."""
    if change_request.status not in (Status.PENDING,):
        return ""
    eligible = len(eligible_approvers(change_request))
    if eligible >= change_request.required_approvals:
        return ""
    return (f"It needs {change_request.required_approvals} approvals, but only {eligible} "
            f"{'person holds' if eligible == 1 else 'people hold'} the approver role in {change_request.project.name} "
            "besides the requester. A project admin can grant the role on the Members page.")


def valid_approvals(change_request: ChangeRequest) -> int:
    """Approvals of the current version, by people other than the requester who still hold
    the approver role."""
    return valid_approvals_of([change_request])[change_request.pk]


def valid_approvals_of(change_requests: list[ChangeRequest]) -> dict[int, int]:
    """`valid_approvals` of many requests in a fixed number of queries (lists, the API's pages):
    approvals of each request's current version, by active holders of the approver role in its
    project other than its requester, counted by who answers for each approval. One person's
    service tokens count once, and never for a request that person (or one of their tokens) opened."""
    if not change_requests:
        return {}
    by_pk = {row.pk: row for row in change_requests}
    holding = {(project_id, user_id) for project_id, user_id in ProjectUserObjectPermission.objects.filter(
        content_object_id__in={row.project_id for row in change_requests}, permission__codename="approve_change",
        user__is_active=True).values_list("content_object_id", "user_id")}
    approvers: dict[int, set[int]] = {}
    for request_id, approver_id, diff_hash in Approval.objects.filter(
            change_request__in=list(by_pk), decision=Approval.Decision.APPROVE, approver__is_active=True,
    ).values_list("change_request_id", "approver_id", "diff_hash"):
        row = by_pk[request_id]
        if diff_hash == row.diff_hash and approver_id != row.requester_id and (row.project_id, approver_id) in holding:
            approvers.setdefault(request_id, set()).add(approver_id)
    principals = principal_ids({*(pk for ids in approvers.values() for pk in ids),
                                *(row.requester_id for row in change_requests)})
    return {row.pk: len({principals[pk] for pk in approvers.get(row.pk, set())} - {principals.get(row.requester_id)})
            for row in change_requests}


def _same_principal(change_request: ChangeRequest, actor: AbstractBaseUser) -> bool:
    principals = principal_ids({change_request.requester_id, actor.pk})
    return principals.get(change_request.requester_id) == principals[actor.pk]


@transaction.atomic
def change_request_approve(*, change_request: ChangeRequest, actor: AbstractBaseUser, comment: str = "") -> ChangeRequest:
    check_text_limit("comment", comment)
    change_request = locked(change_request)
    if change_request.status not in (Status.PENDING, Status.APPROVED):
        raise ValidationError(f"This request is {change_request.get_status_display().lower()}; it can no longer be approved.")
    if change_request.requester_id == actor.pk:
        raise ValidationError("You cannot approve your own request: a second person must.")
    if _same_principal(change_request, actor):
        raise ValidationError("This request was opened by the person this token answers for (or by another of "
                              "their tokens): a second person must approve it.")
    APPROVE.require(actor, change_request)
    if change_request.approvals.filter(approver=actor, diff_hash=change_request.diff_hash).exists():
        raise ValidationError("You have already decided on this version of the request.")
    if change_request.status == Status.APPROVED and valid_approvals(change_request) >= change_request.required_approvals:
        raise ValidationError("This request already has the approvals it needs.")
    Approval.objects.create(change_request=change_request, approver=actor, decision=Approval.Decision.APPROVE,
                            comment=comment, diff_hash=change_request.diff_hash)
    count = valid_approvals(change_request)
    if count >= change_request.required_approvals and change_request.status == Status.PENDING:
        change_request.status = Status.APPROVED
        change_request.decided_at = timezone.now()
        change_request.save(update_fields=["status", "decided_at", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_APPROVED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"approvals": count, "required": change_request.required_approvals, "status": change_request.status},
           reason=comment, change_request_id=change_request.pk)
    if change_request.status == Status.APPROVED:
        settle_approval_notices(change_request, f"Approved ({count} of {change_request.required_approvals})")
        notify_requester(change_request, f"Approved: {label(change_request)}",
                         f"{count} of {change_request.required_approvals} approvals. Apply it or schedule it.")
    return change_request


@transaction.atomic
def change_request_reject(*, change_request: ChangeRequest, actor: AbstractBaseUser, comment: str = "") -> ChangeRequest:
    """Any rejection closes the request, and says why: the comment is the reason, required."""
    comment = (comment or "").strip()
    if not comment:
        raise ValidationError({"comment": REJECT_NEEDS_REASON})
    check_text_limit("comment", comment)
    change_request = locked(change_request)
    if change_request.status not in ChangeRequest.OPEN:
        raise ValidationError(f"This request is {change_request.get_status_display().lower()}; it can no longer be rejected.")
    if change_request.requester_id == actor.pk or _same_principal(change_request, actor):
        raise ValidationError("Cancel your own request instead of rejecting it.")
    REJECT.require(actor, change_request)
    Approval.objects.create(change_request=change_request, approver=actor, decision=Approval.Decision.REJECT,
                            comment=comment, diff_hash=change_request.diff_hash)
    change_request.status = Status.REJECTED
    change_request.decided_at = timezone.now()
    change_request.save(update_fields=["status", "decided_at", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_REJECTED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"status": Status.REJECTED}, reason=comment, change_request_id=change_request.pk)
    settle_approval_notices(change_request, "Rejected", actor)
    notify_requester(change_request, f"Rejected: {label(change_request)}",
                     f"Rejected by {actor.get_username()}: {comment}")
    observers.request_closed(change_request)
    return change_request


@transaction.atomic
def change_request_comment(*, change_request: ChangeRequest, body: str, actor: AbstractBaseUser) -> ChangeRequestComment:
    """Requester, approvers, editors and operators discuss a request; comments never change it."""
    change_request = locked(change_request)
    project = change_request.project
    COMMENT.require(actor, change_request)
    body = (body or "").strip()
    if not body:
        raise ValidationError({"body": "Write a comment first."})
    check_text_limit("body", body, limit="comment")
    comment = ChangeRequestComment.objects.create(change_request=change_request, author=actor,
                                                  author_label=actor.get_username(), body=body)
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_COMMENTED, target=change_request, project=project,
           environment=change_request.environment, flag=change_request.flag, after={"comment": body},
           change_request_id=change_request.pk)
    if actor.pk != change_request.requester_id:
        notify_requester(change_request, f"New comment on {label(change_request)}", f"{actor.get_username()}: {body}")
    return comment
