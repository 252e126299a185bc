"""Who hears of what in change control (rollouts/change_control/notices.py): approvers of a new
request, not its requester; the requester of each decision."""

from __future__ import annotations

import pytest

from rollouts.change_control import approving, submitting
from tests.rollouts.support import PROFILE, escalate, inbox, production, user

pytestmark = pytest.mark.django_db


def test_new_request__approvers_notified_not_the_requester(demo) -> None:
    change_request = escalate()
    for approver in ("pm", "lead"):
        assert inbox(approver) == [f"Approval needed: CR-{change_request.pk} support_agent_tool_mode in Production"]
    assert inbox("owner") == [] and inbox("operator") == []


def test_decisions__requester_notified_of_approval_rejection_and_expiry(demo) -> None:
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    assert inbox("owner") == []  # one of two: not decided yet
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    assert inbox("owner") == [f"Approved: CR-{change_request.pk} support_agent_tool_mode in Production"]
    other = submitting.targeting_change_submit(
        targeting=production(PROFILE), changes={"default_serve": {"variation": "citation_first_v4"}},
        reason="everyone on v4", actor=user("owner"))
    approving.change_request_reject(change_request=other, actor=user("lead"), comment="not before the evidence")
    assert f"Rejected: CR-{other.pk} support_assistant_profile in Production" in inbox("owner")

