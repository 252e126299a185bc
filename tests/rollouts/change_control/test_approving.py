"""Deciding on a change request (rollouts/change_control/approving.py): approvals by a second person
who holds the approver role, counted only while they still may approve; any rejection closes
it; comments from participants only."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from flags.evaluation.engine import compile_snapshot, evaluate
from flags.models import Environment
from flags.snapshot_builder import build_environment_snapshot
from rollouts.change_control import applying, approving
from rollouts.models import ChangeRequest
from tests.rollouts.support import TOOL_MODE, escalate, inbox, user

pytestmark = pytest.mark.django_db


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


def test_deactivated_approver__approval_no_longer_counts(demo: Any) -> None:
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    lead = user("lead")
    lead.is_active = False
    lead.save(update_fields=["is_active"])
    assert approving.valid_approvals(change_request) == 1
    with pytest.raises(ValidationError, match="1 of 2 approvals"):
        applying.change_request_apply(change_request=change_request, actor=user("owner"))


def test_reject__closes_the_request(demo) -> None:
    change_request = escalate()
    approving.change_request_reject(change_request=change_request, actor=user("pm"), comment="too risky")
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "rejected"
    with pytest.raises(ValidationError):
        approving.change_request_approve(change_request=change_request, actor=user("lead"))


def test_comment__participants_only_audited_and_requester_told(demo) -> None:
    change_request = escalate()
    with pytest.raises(ValidationError, match="Commenting needs"):
        approving.change_request_comment(change_request=change_request, body="hm", actor=user("auditor"))
    with pytest.raises(ValidationError):
        approving.change_request_comment(change_request=change_request, body="   ", actor=user("pm"))
    approving.change_request_comment(change_request=change_request, body="Which tickets?", actor=user("pm"))
    assert change_request.comments.get().body == "Which tickets?"
    assert AuditEvent.objects.get(action="change_request.commented").change_request_id == change_request.pk
    assert any(t.startswith("New comment") for t in inbox("owner"))

