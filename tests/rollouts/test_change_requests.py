"""Change requests: the policy's decision, approvals by a second person bound to what they
approved, apply against the base version, schedule, expiry and the kill switch."""

from __future__ import annotations

import datetime
import threading
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from audit.models import AuditEvent
from flags import services as flag_services
from flags.constants import Role
from flags.demo import seed_demo
from flags.evaluation.engine import compile_snapshot, evaluate
from flags.models import Environment, Targeting
from flags.snapshot_builder import build_environment_snapshot
from rollouts.change_control import applying, approving, kill_switch, submitting
from rollouts.models import ChangeRequest
from tests.factories import TEST_ACTOR
from tests.rollouts.support import BETA_WRITE, TOOL_MODE, escalate, production, user

pytestmark = pytest.mark.django_db



def test_submit__tool_mode_escalation_in_production__change_request_needing_two(demo) -> None:
    before = production().version
    change_request = escalate()
    assert isinstance(change_request, ChangeRequest)
    assert change_request.status == "pending" and change_request.required_approvals == 2 and change_request.escalation
    assert any("write (risk 4) becomes reachable" in r["text"] for r in change_request.reasons)
    assert production().version == before  # nothing applied
    assert AuditEvent.objects.get(action="change_request.created").change_request_id == change_request.pk


def test_submit__widening_without_escalation__needs_one(demo) -> None:
    targeting = production()
    rules = [*targeting.rules, {**BETA_WRITE, "serve": {"variation": "approval_required"}}]
    change_request = submitting.targeting_change_submit(targeting=targeting, changes={"rules": rules}, reason="beta",
                                                      actor=user("owner"))
    assert change_request.required_approvals == 1 and not change_request.escalation


def test_submit__de_escalation_in_production__applies_at_once_but_needs_a_reason(demo) -> None:
    targeting = production()
    with pytest.raises(ValidationError, match="Say why"):
        submitting.targeting_change_submit(targeting=targeting, changes={"rules": []}, reason="", actor=user("owner"))
    result = submitting.targeting_change_submit(targeting=targeting, changes={"rules": []}, reason="internal done",
                                              actor=user("owner"))
    assert isinstance(result, Targeting) and result.rules == []


def test_submit__development__applies_at_once(demo) -> None:
    targeting = Targeting.objects.get(flag__key=TOOL_MODE, environment__key="development")
    result = submitting.targeting_change_submit(targeting=targeting, changes={"default_serve": {"variation": "write"}},
                                              actor=user("owner"))
    assert isinstance(result, Targeting) and result.default_serve == {"variation": "write"}


def test_approve__own_request_or_without_role__refused(demo) -> None:
    change_request = escalate(requester="owner")
    with pytest.raises(ValidationError, match="your own request"):
        approving.change_request_approve(change_request=change_request, actor=user("owner"))
    with pytest.raises(ValidationError, match="approver role"):
        approving.change_request_approve(change_request=change_request, actor=user("auditor"))
    assert change_request.approvals.count() == 0


def test_two_approvals_then_apply__served_by_the_engine(demo) -> None:
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"), comment="ok")
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "pending"
    with pytest.raises(ValidationError, match="already decided"):
        approving.change_request_approve(change_request=change_request, actor=user("pm"))
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "approved"
    applied = applying.change_request_apply(change_request=change_request, actor=user("owner"))
    assert applied.status == "applied"
    row = AuditEvent.objects.get(action="targeting.updated", change_request_id=change_request.pk)
    assert row.reason.startswith(f"CR-{change_request.pk}")
    environment = Environment.objects.get(project=demo, key="production")
    snapshot = compile_snapshot(build_environment_snapshot(environment.pk))
    assert evaluate(snapshot, TOOL_MODE, {"accountId": "acct-beta-101"}).variant == "write"


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


def test_apply__approver_lost_the_role__refused(demo) -> None:
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    flag_services.membership_revoke(project=demo, user=user("lead"), role=Role.APPROVER, actor=TEST_ACTOR)
    with pytest.raises(ValidationError, match="1 of 2 approvals"):
        applying.change_request_apply(change_request=change_request, actor=user("owner"))


def test_reject__closes_the_request(demo) -> None:
    change_request = escalate()
    approving.change_request_reject(change_request=change_request, actor=user("pm"), comment="too risky")
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "rejected"
    with pytest.raises(ValidationError):
        approving.change_request_approve(change_request=change_request, actor=user("lead"))


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


def test_killswitch__operator_with_reason__off_at_once_and_audited(demo) -> None:
    targeting = production()
    with pytest.raises(ValidationError, match="operator role"):
        kill_switch.killswitch_flip(targeting=targeting, reason="x", actor=user("owner"))
    with pytest.raises(ValidationError, match="Say why"):
        kill_switch.killswitch_flip(targeting=targeting, reason=" ", actor=user("operator"))
    kill_switch.killswitch_flip(targeting=targeting, reason="agent wrote to prod tickets", actor=user("operator"))
    assert production().enabled is False
    event = AuditEvent.objects.get(action="killswitch.flipped")
    assert event.reason == "agent wrote to prod tickets" and event.actor_label.endswith("(operator)")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_races__double_apply_and_concurrent_approvals__one_outcome_each() -> None:
    seed_demo()
    change_request = escalate()

    def in_threads(*calls: Any) -> list[str]:
        barrier = threading.Barrier(len(calls))
        outcomes: list[str] = []

        def run(call: Any) -> None:
            try:
                barrier.wait(timeout=10)
                call()
                outcomes.append("ok")
            except ValidationError:
                outcomes.append("refused")
            finally:
                connection.close()

        threads = [threading.Thread(target=run, args=(c,)) for c in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
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
