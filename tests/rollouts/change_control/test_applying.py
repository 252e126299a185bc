"""A change request's way to an end (rollouts/change_control/applying.py): an edit discards its
approvals; apply against its base version and the served states approved (or conflicted),
only by someone who may still carry it; scheduled applies, expiry, and concurrent approvals
and applies."""

from __future__ import annotations

import datetime
import functools
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.models import AuditEvent
from flags import services as flag_services
from flags.constants import Role
from flags.demo import seed_demo
from flags.models import Flag, Variation
from rollouts.change_control import applying, approving, submitting
from rollouts.models import ChangeRequest
from tests.concurrency import run_together
from tests.factories import TEST_ACTOR
from tests.rollouts.support import BETA_WRITE, escalate, production, user

pytestmark = pytest.mark.django_db


def test_edit__discards_earlier_approvals(demo) -> None:
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    edited = applying.change_request_edit(
        change_request=change_request, actor=user("owner"), reason="only beta ones",
        changes={"rules": [*production().rules, {**BETA_WRITE, "clauses": [{"attribute": "plan", "op": "in",
                                                                             "values": ["beta"]}]}]})
    assert edited.status == "pending" and approving.valid_approvals(edited) == 0
    with pytest.raises(ValidationError, match="Only an approved request"):
        applying.change_request_apply(change_request=edited, actor=user("owner"))


def test_apply__base_version_moved__conflicted_and_nothing_applied(demo) -> None:
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    # meanwhile a de-escalation lands
    submitting.targeting_change_submit(targeting=production(), changes={"rules": []}, reason="incident",
                                     actor=user("owner"))
    result = applying.change_request_apply(change_request=change_request, actor=user("owner"))
    assert result.status == "conflicted" and result.conflict["current"]["rules"] == []
    assert production().rules == []
    assert AuditEvent.objects.filter(action="change_request.conflicted").exists()


def test_approved_request__conflicts_when_a_variation_changed_after_approval(demo: Any) -> None:
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    # write is not served in production yet, so its value may change at once...
    write = Variation.objects.get(flag__key="support_agent_tool_mode", key="write")
    flag_services.variation_update(variation=write, actor=TEST_ACTOR, value="admin_everything")
    # ...but the approved request no longer applies: approvers approved the old value
    result = applying.change_request_apply(change_request=change_request, actor=user("owner"))
    assert result.status == "conflicted"
    assert not any(rule.get("serve") == {"variation": "write"} for rule in production().rules)


def test_apply__approver_lost_the_role__refused(demo) -> None:
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    flag_services.membership_revoke(project=demo, user=user("lead"), role=Role.APPROVER, actor=TEST_ACTOR)
    with pytest.raises(ValidationError, match="1 of 2 approvals"):
        applying.change_request_apply(change_request=change_request, actor=user("owner"))


def test_demoted_requester__cannot_apply_or_schedule(demo: Any) -> None:
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    flag_services.membership_revoke(project=demo, user=user("owner"), role=Role.EDITOR, actor=TEST_ACTOR)
    flag_services.flag_update(flag=Flag.objects.get(key="support_agent_tool_mode"), actor=TEST_ACTOR, owner_user=None)
    flag_services.membership_grant(project=demo, user=user("owner"), role=Role.VIEWER, actor=TEST_ACTOR)
    with pytest.raises(ValidationError, match="owner or editor"):
        applying.change_request_apply(change_request=change_request, actor=user("owner"))
    with pytest.raises(ValidationError, match="owner or editor"):
        applying.change_request_schedule(change_request=change_request, actor=user("owner"),
                                         when=timezone.now() + datetime.timedelta(hours=1))
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "approved"


def test_schedule__sweep_applies_once(demo) -> None:
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    applying.change_request_schedule(change_request=change_request, actor=user("owner"),
                                     when=timezone.now() + datetime.timedelta(minutes=5))
    assert applying.apply_due_change_requests() == 0
    ChangeRequest.objects.filter(pk=change_request.pk).update(scheduled_for=timezone.now() - datetime.timedelta(seconds=1))
    assert applying.apply_due_change_requests() == 1
    assert applying.apply_due_change_requests() == 0
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "applied"
    assert AuditEvent.objects.get(action="change_request.applied").actor_label == "system:change-scheduler"


def test_expiry__undecided_past_the_policy__expired(demo) -> None:
    change_request = escalate()
    ChangeRequest.objects.filter(pk=change_request.pk).update(created_at=timezone.now() - datetime.timedelta(days=8))
    assert applying.expire_undecided_change_requests() == 1
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "expired"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_races__double_apply_and_concurrent_approvals__one_outcome_each() -> None:
    seed_demo()
    change_request = escalate()

    def outcome(call: Any) -> str:
        try:
            call()
            return "ok"
        except ValidationError:
            return "refused"

    def in_threads(*calls: Any) -> list[str]:
        outcomes, _ = run_together(*(functools.partial(outcome, call) for call in calls))
        return sorted(outcomes)

    # Two approvers at once: both count, the request ends approved exactly once
    assert in_threads(lambda: approving.change_request_approve(change_request=change_request, actor=user("pm")),
                      lambda: approving.change_request_approve(change_request=change_request, actor=user("lead"))) == ["ok", "ok"]
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "approved"
    # Apply twice at once: one applies, the other is refused
    assert in_threads(lambda: applying.change_request_apply(change_request=change_request, actor=user("owner")),
                      lambda: applying.change_request_apply(change_request=change_request, actor=user("owner"))) == [
        "ok", "refused"]
    assert AuditEvent.objects.filter(action="change_request.applied").count() == 1
    assert AuditEvent.objects.filter(action="targeting.updated", change_request_id=change_request.pk).count() == 1

