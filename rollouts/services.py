"""Change control services: the policy decides whether a targeting change in an environment
applies now or becomes a change request; requests are approved by others, applied under row
locks against their base version, scheduled, cancelled or expired. Every transition locks
the request, re-checks its status and writes its audit row in the same transaction.
Flags are written only through flags.services.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import asdict
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.chain import canonical_json
from audit.constants import AuditAction
from audit.services import Actor, SystemActor, record
from flags import services as flag_services
from flags.models import Environment, Targeting
from flags.permissions import has_project_permission
from flags.snapshots import targeting_state
from rollouts.models import Approval, ApprovalPolicy, ChangeRequest
from rollouts.policy import Classification, classify_targeting_change

Status = ChangeRequest.Status
SCHEDULER = SystemActor("change-scheduler")
EXPIRER = SystemActor("change-expiry")


def policy_for(environment: Environment) -> ApprovalPolicy:
    """The environment's policy, or the defaults (2 approvals for escalations, 1 otherwise)
    when no one has set one. A read: it creates nothing."""
    existing = ApprovalPolicy.objects.filter(environment=environment).first()
    return existing or ApprovalPolicy(environment=environment)


def _state(targeting: Targeting) -> dict[str, Any]:
    return {k: v for k, v in targeting_state(targeting).items() if k != "version"}


def classify(targeting: Targeting, proposed: dict[str, Any]) -> Classification:
    flag = targeting.flag
    ranks = dict(flag.variations.values_list("key", "risk_rank"))
    return classify_targeting_change(current=_state(targeting), proposed=proposed, risk_ranks=ranks,
                                     fallback=flag.fallback_variation.key)


def _diff_hash(base_version: int, proposed: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({"base": base_version, "proposed": proposed}).encode()).hexdigest()


def _user(actor: Actor) -> AbstractBaseUser | None:
    return actor if isinstance(actor, AbstractBaseUser) else None


def _require_reason(reason: str) -> str:
    if not reason or not reason.strip():
        raise ValidationError({"reason": "Say why: the reason stays with the change in the audit trail."})
    return reason.strip()


@transaction.atomic
def targeting_change_submit(*, targeting: Targeting, changes: dict[str, Any], reason: str = "",
                            actor: Actor) -> Targeting | ChangeRequest:
    """Apply now, or open a change request, as the environment's policy says. Outside a
    governed environment, and for changes that raise no risk, the change applies at once."""
    targeting = Targeting.objects.select_related("flag__fallback_variation", "environment__project").get(pk=targeting.pk)
    proposed = flag_services.targeting_proposal(targeting=targeting, changes=changes)
    if not targeting.environment.is_governed:
        return flag_services.targeting_update(targeting=targeting, actor=actor, reason=reason, **changes)
    classification = classify(targeting, proposed)
    if not classification.raises_risk:
        return flag_services.targeting_update(targeting=targeting, actor=actor, reason=_require_reason(reason),
                                              **changes)
    return _change_request_open(targeting=targeting, proposed=proposed, classification=classification,
                                reason=_require_reason(reason), actor=actor)


def _change_request_open(*, targeting: Targeting, proposed: dict[str, Any], classification: Classification,
                         reason: str, actor: Actor) -> ChangeRequest:
    policy = policy_for(targeting.environment)
    required = policy.approvals_for_escalation if classification.escalation else policy.approvals_otherwise
    change_request = ChangeRequest(
        project=targeting.environment.project, flag=targeting.flag, environment=targeting.environment,
        base_version=targeting.version, base_state=_state(targeting), proposed=proposed,
        diff_hash=_diff_hash(targeting.version, proposed), reasons=[asdict(r) for r in classification.reasons],
        escalation=classification.escalation, required_approvals=required, requester=_user(actor),
        requester_label=str(actor if not isinstance(actor, AbstractBaseUser) else actor.get_username()),
        reason=reason,
    )
    change_request.full_clean()
    change_request.save()
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_CREATED, target=change_request,
           project=change_request.project, environment=targeting.environment, flag=targeting.flag,
           after={"proposed": proposed, "reasons": change_request.reasons, "required_approvals": required},
           reason=reason, change_request_id=change_request.pk,
           summary=f"Requested a change to {targeting.flag.key} in {targeting.environment.name}: "
                   f"{required} approval{'s' if required > 1 else ''} needed")
    return change_request


def _locked(change_request: ChangeRequest) -> ChangeRequest:
    return (ChangeRequest.objects.select_for_update(of=("self",))
            .select_related("project", "flag", "environment").get(pk=change_request.pk))


def valid_approvals(change_request: ChangeRequest) -> int:
    """Approvals of the current version, by people other than the requester who still hold
    the approver role."""
    approvers = {
        approval.approver for approval in
        change_request.approvals.filter(decision=Approval.Decision.APPROVE, diff_hash=change_request.diff_hash)
        .select_related("approver")
        if approval.approver_id != change_request.requester_id
    }
    return sum(1 for user in approvers if has_project_permission(user, change_request.project, "approve_change"))


@transaction.atomic
def change_request_approve(*, change_request: ChangeRequest, actor: AbstractBaseUser, comment: str = "") -> ChangeRequest:
    change_request = _locked(change_request)
    if change_request.status not in (Status.PENDING, Status.APPROVED):
        raise ValidationError(f"This request is {change_request.get_status_display().lower()}; it can no longer be approved.")
    if change_request.requester_id == actor.pk:
        raise ValidationError("You cannot approve your own request: a second person must.")
    if not has_project_permission(actor, change_request.project, "approve_change"):
        raise ValidationError("Approving needs the approver role in this project.")
    if change_request.approvals.filter(approver=actor, diff_hash=change_request.diff_hash).exists():
        raise ValidationError("You have already decided on this version of the request.")
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
    return change_request


@transaction.atomic
def change_request_reject(*, change_request: ChangeRequest, actor: AbstractBaseUser, comment: str = "") -> ChangeRequest:
    """Any rejection closes the request."""
    change_request = _locked(change_request)
    if change_request.status not in ChangeRequest.OPEN:
        raise ValidationError(f"This request is {change_request.get_status_display().lower()}; it can no longer be rejected.")
    if change_request.requester_id == actor.pk:
        raise ValidationError("Cancel your own request instead of rejecting it.")
    if not has_project_permission(actor, change_request.project, "approve_change"):
        raise ValidationError("Rejecting needs the approver role in this project.")
    Approval.objects.create(change_request=change_request, approver=actor, decision=Approval.Decision.REJECT,
                            comment=comment, diff_hash=change_request.diff_hash)
    change_request.status = Status.REJECTED
    change_request.decided_at = timezone.now()
    change_request.save(update_fields=["status", "decided_at", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_REJECTED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"status": Status.REJECTED}, reason=comment, change_request_id=change_request.pk)
    return change_request


@transaction.atomic
def change_request_edit(*, change_request: ChangeRequest, changes: dict[str, Any], reason: str,
                        actor: AbstractBaseUser) -> ChangeRequest:
    """The requester revises the proposal. Its hash changes, so earlier approvals no longer
    count, and the policy classifies it afresh."""
    change_request = _locked(change_request)
    if change_request.requester_id != actor.pk:
        raise ValidationError("Only the requester can edit a request.")
    if change_request.status not in ChangeRequest.OPEN:
        raise ValidationError(f"This request is {change_request.get_status_display().lower()}; it can no longer be edited.")
    base = Targeting(flag=change_request.flag, environment=change_request.environment,
                     **{**change_request.base_state, "version": change_request.base_version})
    proposed = flag_services.targeting_proposal(targeting=base, changes={**change_request.proposed, **changes})
    flag = change_request.flag
    ranks = dict(flag.variations.values_list("key", "risk_rank"))
    classification = classify_targeting_change(current=change_request.base_state, proposed=proposed,
                                               risk_ranks=ranks, fallback=flag.fallback_variation.key)
    if not classification.raises_risk:
        raise ValidationError("This version raises no risk: cancel the request and make the change directly.")
    policy = policy_for(change_request.environment)
    before = {"proposed": change_request.proposed, "status": change_request.status}
    change_request.proposed = proposed
    change_request.diff_hash = _diff_hash(change_request.base_version, proposed)
    change_request.reasons = [asdict(r) for r in classification.reasons]
    change_request.escalation = classification.escalation
    change_request.required_approvals = (policy.approvals_for_escalation if classification.escalation
                                         else policy.approvals_otherwise)
    change_request.status = Status.PENDING
    change_request.scheduled_for = None
    change_request.reason = _require_reason(reason)
    change_request.save()
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_EDITED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=flag,
           before=before, after={"proposed": proposed, "status": Status.PENDING}, reason=reason,
           change_request_id=change_request.pk, summary="Edited the request: earlier approvals no longer count")
    return change_request


@transaction.atomic
def change_request_apply(*, change_request: ChangeRequest, actor: Actor) -> ChangeRequest:
    """Apply an approved request, if its base version is still current. Otherwise the request
    becomes conflicted, showing what changed in between; nothing is applied."""
    change_request = _locked(change_request)
    due = change_request.status == Status.SCHEDULED and change_request.scheduled_for <= timezone.now()
    if change_request.status != Status.APPROVED and not due:
        raise ValidationError(f"Only an approved request can be applied; this one is "
                              f"{change_request.get_status_display().lower()}.")
    if isinstance(actor, AbstractBaseUser) and not (
        actor.pk == change_request.requester_id
        or has_project_permission(actor, change_request.project, "propose_change")
    ):
        raise ValidationError("Applying needs the requester or the flag owner / editor role.")
    count = valid_approvals(change_request)
    if count < change_request.required_approvals:
        raise ValidationError(f"{count} of {change_request.required_approvals} approvals are still valid "
                              "(an approver may have lost the role).")
    targeting = Targeting.objects.select_for_update().get(flag=change_request.flag,
                                                          environment=change_request.environment)
    if targeting.version != change_request.base_version:
        change_request.status = Status.CONFLICTED
        change_request.conflict = {"base_version": change_request.base_version, "current_version": targeting.version,
                                   "base": change_request.base_state, "current": _state(targeting)}
        change_request.save(update_fields=["status", "conflict", "updated_at"])
        record(actor=actor, action=AuditAction.CHANGE_REQUEST_CONFLICTED, target=change_request,
               project=change_request.project, environment=change_request.environment, flag=change_request.flag,
               after=change_request.conflict, change_request_id=change_request.pk,
               summary=f"Not applied: the targeting moved from version {change_request.base_version} "
                       f"to {targeting.version} since the request was made")
        return change_request
    flag_services.targeting_update(
        targeting=targeting, actor=actor, expected_version=change_request.base_version,
        reason=f"CR-{change_request.pk}: {change_request.reason}", change_request_id=change_request.pk,
        **change_request.proposed,
    )
    change_request.status = Status.APPLIED
    change_request.applied_at = timezone.now()
    change_request.save(update_fields=["status", "applied_at", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_APPLIED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"status": Status.APPLIED, "approvals": count}, change_request_id=change_request.pk)
    return change_request


@transaction.atomic
def change_request_schedule(*, change_request: ChangeRequest, when: datetime.datetime,
                            actor: AbstractBaseUser) -> ChangeRequest:
    change_request = _locked(change_request)
    if change_request.status != Status.APPROVED:
        raise ValidationError("Only an approved request can be scheduled.")
    if when <= timezone.now():
        raise ValidationError({"scheduled_for": "Pick a time in the future."})
    change_request.status = Status.SCHEDULED
    change_request.scheduled_for = when
    change_request.save(update_fields=["status", "scheduled_for", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_SCHEDULED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"scheduled_for": when.isoformat()}, change_request_id=change_request.pk)
    return change_request


@transaction.atomic
def change_request_cancel(*, change_request: ChangeRequest, actor: AbstractBaseUser, reason: str = "") -> ChangeRequest:
    change_request = _locked(change_request)
    if change_request.requester_id != actor.pk:
        raise ValidationError("Only the requester can cancel a request.")
    if change_request.status not in (*ChangeRequest.OPEN, Status.CONFLICTED):
        raise ValidationError(f"This request is {change_request.get_status_display().lower()} already.")
    change_request.status = Status.CANCELLED
    change_request.save(update_fields=["status", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_CANCELLED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"status": Status.CANCELLED}, reason=reason, change_request_id=change_request.pk)
    return change_request


def apply_due_change_requests() -> int:
    """The scheduler's sweep: each due request in its own transaction, idempotent through the
    status check under the row lock. Returns how many were applied."""
    applied = 0
    due = ChangeRequest.objects.filter(status=Status.SCHEDULED, scheduled_for__lte=timezone.now())
    for change_request in due.only("pk"):
        try:
            result = change_request_apply(change_request=change_request, actor=SCHEDULER)
        except ValidationError:
            continue  # no longer due (applied by another sweep) or no longer valid: left as it is
        applied += result.status == Status.APPLIED
    return applied


def expire_undecided_change_requests() -> int:
    """Pending requests older than their environment's expiry become expired."""
    expired = 0
    now = timezone.now()
    for change_request in ChangeRequest.objects.filter(status=Status.PENDING).select_related("environment"):
        days = policy_for(change_request.environment).expire_after_days
        if change_request.created_at <= now - datetime.timedelta(days=days):
            expired += _expire(change_request, days)
    return expired


@transaction.atomic
def _expire(change_request: ChangeRequest, days: int) -> int:
    change_request = _locked(change_request)
    if change_request.status != Status.PENDING:
        return 0
    change_request.status = Status.EXPIRED
    change_request.save(update_fields=["status", "updated_at"])
    record(actor=EXPIRER, action=AuditAction.CHANGE_REQUEST_EXPIRED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"status": Status.EXPIRED}, change_request_id=change_request.pk,
           summary=f"Expired after {days} days without a decision")
    return 1


@transaction.atomic
def killswitch_flip(*, targeting: Targeting, reason: str, actor: AbstractBaseUser) -> Targeting:
    """Operators send a flag in one environment to its fallback at once, with a reason:
    making things safer never waits for an approval."""
    targeting = Targeting.objects.select_related("flag", "environment__project").get(pk=targeting.pk)
    project = targeting.environment.project
    if not has_project_permission(actor, project, "flip_killswitch"):
        raise ValidationError("Flipping a kill switch needs the operator role in this project.")
    reason = _require_reason(reason)
    updated = flag_services.targeting_update(targeting=targeting, actor=actor, enabled=False,
                                             reason=f"Kill switch: {reason}")
    record(actor=actor, action=AuditAction.KILLSWITCH_FLIPPED, target=targeting.flag, project=project,
           environment=targeting.environment, flag=targeting.flag, after={"enabled": False},
           reason=reason, summary=f"Kill switch: {targeting.flag.key} sent to its fallback in "
                                  f"{targeting.environment.name}")
    return updated
