"""A change request's way to an end: edited (approvals discarded), applied under row locks
against its base and the served states approved (or conflicted), scheduled, cancelled or
withdrawn, expired. Every transition locks the request, re-checks its status and writes its
audit row in the same transaction; every end state is announced (observers.request_closed).
"""

from __future__ import annotations

import datetime
from dataclasses import asdict
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import Actor, SystemActor, record
from audit.validators import check_text_limit
from flags import services as flag_services
from flags.models import Flag, Segment, Targeting
from flags.permissions import APPLY, CANCEL_REQUEST, EDIT_REQUEST, SCHEDULE
from flags.served_state.guard import (
    Authorization,
    GovernanceError,
    governed_write,
    pair_key,
)
from flags.served_state.policy import (
    classify_targeting_change,
)
from rollouts.actors import require_reason
from rollouts.change_control import observers
from rollouts.change_control.approval_policy import governed_policy, policy_for
from rollouts.change_control.approving import valid_approvals
from rollouts.change_control.binding import bind, flag_content, locked, segment_content, served_pair, targeting_content
from rollouts.change_control.notices import notify_approvers, notify_requester, settle_approval_notices
from rollouts.change_control.wording import label
from rollouts.models import ChangeRequest

Status = ChangeRequest.Status


SCHEDULER = SystemActor("change-scheduler")


EXPIRER = SystemActor("change-expiry")


class _BaseMoved(Exception):
    """What the request replaces moved since it was made: a conflict, found under the locks."""

    def __init__(self, base: Any, current: Any, current_version: int, summary: str):
        super().__init__(summary)
        self.base, self.current, self.current_version, self.summary = base, current, current_version, summary


def _write_flag_change(change_request: ChangeRequest, scope: Any, actor: Actor) -> None:
    scope.touch_flags(project_id=change_request.project_id, flag_ids=[change_request.flag_id])
    flag = Flag.objects.select_related("fallback_variation", "project").get(pk=change_request.flag_id)
    current = flag_content(flag, change_request.proposed)
    if current != change_request.base_state:
        raise _BaseMoved(change_request.base_state, current, flag.version,
                         "Not applied: what the request changes was changed since it was made")
    reason = f"CR-{change_request.pk}: {change_request.reason}"
    proposed = change_request.proposed
    for key, value in proposed.get("variations", {}).items():
        flag_services.variation_update(variation=flag.variations.get(key=key), actor=actor, value=value,
                                       reason=reason, change_request_id=change_request.pk)
    for key, rank in proposed.get("risk_ranks", {}).items():
        flag_services.variation_update(variation=flag.variations.get(key=key), actor=actor, risk_rank=rank,
                                       reason=reason, change_request_id=change_request.pk)
    contract = {"json_schema": proposed["json_schema"]} if "json_schema" in proposed else {}
    if contract or "fallback_variation" in proposed:
        flag_services.flag_update(flag=flag, actor=actor, fallback_variation_key=proposed.get("fallback_variation"),
                                  reason=reason, change_request_id=change_request.pk, **contract)


def _write_targeting_change(change_request: ChangeRequest, scope: Any, actor: Actor) -> None:
    scope.touch_flags(project_id=change_request.project_id, flag_ids=[change_request.flag_id])
    targeting = Targeting.objects.select_for_update().get(flag=change_request.flag,
                                                          environment=change_request.environment)
    if targeting.version != change_request.base_version:
        raise _BaseMoved(change_request.base_state, targeting_content(targeting), targeting.version,
                         f"Not applied: the targeting moved from version {change_request.base_version} "
                         f"to {targeting.version} since the request was made")
    flag_services.targeting_update(
        targeting=targeting, actor=actor, expected_version=change_request.base_version,
        reason=f"CR-{change_request.pk}: {change_request.reason}", change_request_id=change_request.pk,
        **change_request.proposed,
    )


def _write_segment_change(change_request: ChangeRequest, scope: Any, actor: Actor) -> None:
    segment = change_request.segment
    scope.touch_segment(project_id=change_request.project_id, segment_key=segment.key)
    segment = Segment.objects.get(pk=segment.pk)
    if segment.version != change_request.base_version:
        raise _BaseMoved(change_request.base_state, segment_content(segment), segment.version,
                         f"Not applied: the segment moved from version {change_request.base_version} "
                         f"to {segment.version} since the request was made")
    flag_services.segment_update(segment=segment, actor=actor, expected_version=change_request.base_version,
                                 reason=f"CR-{change_request.pk}: {change_request.reason}",
                                 change_request_id=change_request.pk, **change_request.proposed)


_WRITERS = {
    ChangeRequest.Kind.TARGETING: _write_targeting_change,
    ChangeRequest.Kind.FLAG: _write_flag_change,
    ChangeRequest.Kind.SEGMENT: _write_segment_change,
}


def _authorization(change_request: ChangeRequest) -> Authorization:
    return Authorization(change_request.served_hashes, f"CR-{change_request.pk}")


def _apply_under_guard(change_request: ChangeRequest, actor: Actor, count: int) -> ChangeRequest:
    """Write the request's change with its approval as the only authorization, under the
    served-state guard's locks. A moved base, or a served state that differs from the one
    approved (a segment widened, a value edited, in between), leaves nothing written and the
    request conflicted, showing what moved."""
    if not change_request.served_hashes and change_request.kind != ChangeRequest.Kind.TARGETING:
        raise ValidationError("This request was approved before approvals bound what production serves: "
                              "cancel it and submit it again.")
    try:
        with transaction.atomic(), governed_write(authorization=_authorization(change_request)) as scope:
            _WRITERS[change_request.kind](change_request, scope, actor)
    except _BaseMoved as moved:
        return _conflicted(change_request, actor, base=moved.base, current=moved.current,
                           current_version=moved.current_version, summary=moved.summary)
    except GovernanceError as refused:
        moved_in = "; ".join(f"{r.flag_key} in {r.environment_name}" for r in refused.refusals)
        current = {pair_key(r.after.flag_id, r.after.environment_id): r.after.state for r in refused.refusals}
        return _conflicted(change_request, actor, base=change_request.base_state, current=change_request.base_state,
                           current_version=change_request.base_version, served=current,
                           summary=f"Not applied: what {moved_in} would serve differs from what was approved")
    return _applied(change_request, actor, count)


def _conflicted(change_request: ChangeRequest, actor: Actor, *, base: Any, current: Any, current_version: int,
                summary: str, served: dict[str, Any] | None = None) -> ChangeRequest:
    """`served`: the served states the apply would have produced, where they differ from
    the approved ones (`served_states`); the page lists what moved between the two."""
    change_request.status = Status.CONFLICTED
    change_request.conflict = {"base_version": change_request.base_version, "current_version": current_version,
                               "base": base, "current": current, "summary": summary}
    if served:
        change_request.conflict["served"] = served
    change_request.save(update_fields=["status", "conflict", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_CONFLICTED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after=change_request.conflict, change_request_id=change_request.pk, summary=summary)
    settle_approval_notices(change_request, "Conflicted, not applied")
    notify_requester(change_request, f"Conflicted: {label(change_request)}",
                     "What the request changes was changed since it was made; nothing was applied. "
                     "Open a new request from the current state.")
    observers.request_closed(change_request)
    return change_request


def _applied(change_request: ChangeRequest, actor: Actor, count: int) -> ChangeRequest:
    change_request.status = Status.APPLIED
    change_request.applied_at = timezone.now()
    change_request.save(update_fields=["status", "applied_at", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_APPLIED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"status": Status.APPLIED, "approvals": count}, change_request_id=change_request.pk)
    settle_approval_notices(change_request, "Applied", actor)
    if not isinstance(actor, AbstractBaseUser) or actor.pk != change_request.requester_id:
        notify_requester(change_request, f"Applied: {label(change_request)}",
                         f"Applied by {actor.get_username() if isinstance(actor, AbstractBaseUser) else actor}.")
    observers.request_closed(change_request)
    return change_request


@transaction.atomic
def change_request_edit(*, change_request: ChangeRequest, changes: dict[str, Any], reason: str,
                        actor: AbstractBaseUser) -> ChangeRequest:
    """The requester revises the proposal. Its hash changes, so earlier approvals no longer
    count, and the policy classifies it afresh."""
    change_request = locked(change_request)
    EDIT_REQUEST.require(actor, change_request)
    if change_request.kind != ChangeRequest.Kind.TARGETING:
        raise ValidationError("Only a targeting request can be edited: cancel this one and make the edit again.")
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
    targeting = Targeting.objects.select_related("environment").get(flag=flag, environment=change_request.environment)
    pair = served_pair(targeting, proposed)
    bind(change_request, {pair[1].key: pair[1]} if pair else {})
    change_request.reasons = [asdict(r) for r in classification.reasons]
    change_request.escalation = classification.escalation
    change_request.required_approvals = policy.required_approvals(escalation=classification.escalation)
    change_request.status = Status.PENDING
    change_request.scheduled_for = None
    change_request.reason = require_reason(reason)
    change_request.save()
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_EDITED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=flag,
           before=before, after={"proposed": proposed, "status": Status.PENDING}, reason=reason,
           change_request_id=change_request.pk, summary="Edited the request: earlier approvals no longer count")
    notify_approvers(change_request, f"Edited, approval needed again: {label(change_request)}",
                     f"{change_request.requester_label} revised the request: {change_request.reason}")
    return change_request


@transaction.atomic
def change_request_apply(*, change_request: ChangeRequest, actor: Actor) -> ChangeRequest:
    """Apply an approved request, if its base version is still current. Otherwise the request
    becomes conflicted, showing what changed in between; nothing is applied."""
    change_request = locked(change_request)
    due = change_request.status == Status.SCHEDULED and change_request.scheduled_for <= timezone.now()
    if change_request.status != Status.APPROVED and not due:
        raise ValidationError(f"Only an approved request can be applied; this one is "
                              f"{change_request.get_status_display().lower()}.")
    APPLY.require(actor, change_request, system=True)  # the scheduler applies what was approved
    count = valid_approvals(change_request)
    if count < change_request.required_approvals:
        raise ValidationError(f"{count} of {change_request.required_approvals} approvals are still valid "
                              "(an approver may have lost the role).")
    return _apply_under_guard(change_request, actor, count)


@transaction.atomic
def change_request_schedule(*, change_request: ChangeRequest, when: datetime.datetime,
                            actor: AbstractBaseUser) -> ChangeRequest:
    change_request = locked(change_request)
    SCHEDULE.require(actor, change_request)
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


CANCELLABLE = (*ChangeRequest.OPEN, Status.CONFLICTED)


@transaction.atomic
def change_request_cancel(*, change_request: ChangeRequest, actor: AbstractBaseUser, reason: str = "") -> ChangeRequest:
    check_text_limit("reason", reason)
    change_request = locked(change_request)
    CANCEL_REQUEST.require(actor, change_request)
    if change_request.status not in CANCELLABLE:
        raise ValidationError(f"This request is {change_request.get_status_display().lower()} already.")
    return _cancelled(change_request, actor, reason)


@transaction.atomic
def change_request_withdraw(*, change_request: ChangeRequest, actor: Actor, reason: str,
                            summary: str) -> ChangeRequest:
    """Whoever opened a request on a person's behalf takes it back (a rollout plan stopped or
    reversed withdraws the stage it was waiting to enter): cancelled, audited with `summary`,
    announced. The caller checked who may stop it; a request already closed stays as it is."""
    change_request = locked(change_request)
    if change_request.status not in CANCELLABLE:
        return change_request
    return _cancelled(change_request, actor, reason, summary=summary)


def _cancelled(change_request: ChangeRequest, actor: Actor, reason: str, summary: str = "") -> ChangeRequest:
    change_request.status = Status.CANCELLED
    change_request.save(update_fields=["status", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_CANCELLED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"status": Status.CANCELLED}, reason=reason, change_request_id=change_request.pk, summary=summary)
    settle_approval_notices(change_request, "Cancelled", actor)
    observers.request_closed(change_request)
    return change_request


def apply_due_change_requests() -> int:
    """The scheduler's sweep: each due request in its own transaction, idempotent through the
    status check under the row lock. Returns how many were applied. Scheduled requests whose
    approvals lapsed (an approver lost the role) first go back to waiting, visibly."""
    for change_request in ChangeRequest.objects.filter(status=Status.SCHEDULED).only("pk"):
        _unschedule_if_lapsed(change_request)
    applied = 0
    due = ChangeRequest.objects.filter(status=Status.SCHEDULED, scheduled_for__lte=timezone.now())
    for change_request in due.only("pk"):
        try:
            result = change_request_apply(change_request=change_request, actor=SCHEDULER)
        except ValidationError:
            continue  # no longer due (applied by another sweep) or no longer valid: left as it is
        applied += result.status == Status.APPLIED
    return applied


@transaction.atomic
def _unschedule_if_lapsed(change_request: ChangeRequest) -> bool:
    change_request = locked(change_request)
    if change_request.status != Status.SCHEDULED:
        return False
    count = valid_approvals(change_request)
    if count >= change_request.required_approvals:
        return False
    when = change_request.scheduled_for
    change_request.status = Status.PENDING
    change_request.scheduled_for = None
    change_request.decided_at = None
    change_request.save(update_fields=["status", "scheduled_for", "decided_at", "updated_at"])
    text = (f"{count} of {change_request.required_approvals} approvals are still valid (an approver lost the role "
            f"or left), so it will not be applied at {when:%Y-%m-%d %H:%M} UTC. It waits for approvals again.")
    record(actor=SCHEDULER, action=AuditAction.CHANGE_REQUEST_UNSCHEDULED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           before={"status": Status.SCHEDULED, "scheduled_for": when.isoformat()},
           after={"status": Status.PENDING, "approvals": count}, change_request_id=change_request.pk, summary=text)
    notify_requester(change_request, f"No longer scheduled: {label(change_request)}", text)
    return True


def expire_undecided_change_requests() -> int:
    """Pending requests older than their environment's expiry become expired."""
    expired = 0
    now = timezone.now()
    for change_request in ChangeRequest.objects.filter(status=Status.PENDING).select_related("environment", "project"):
        policy = (policy_for(change_request.environment) if change_request.environment_id
                  else governed_policy(change_request.project))
        days = policy.expire_after_days
        if change_request.created_at <= now - datetime.timedelta(days=days):
            expired += _expire(change_request, days)
    return expired


@transaction.atomic
def _expire(change_request: ChangeRequest, days: int) -> int:
    change_request = locked(change_request)
    if change_request.status != Status.PENDING:
        return 0
    change_request.status = Status.EXPIRED
    change_request.save(update_fields=["status", "updated_at"])
    record(actor=EXPIRER, action=AuditAction.CHANGE_REQUEST_EXPIRED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"status": Status.EXPIRED}, change_request_id=change_request.pk,
           summary=f"Expired after {days} days without a decision")
    settle_approval_notices(change_request, f"Expired after {days} days")
    notify_requester(change_request, f"Expired: {label(change_request)}",
                     f"No decision within {days} days. Submit it again if it is still wanted.")
    observers.request_closed(change_request)
    return 1
