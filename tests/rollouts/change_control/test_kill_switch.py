"""The kill switch (rollouts/change_control/kill_switch.py): an operator, with a reason, sends a
flag in one environment to its fallback at once, audited; a follow-up opens and the owner and
approvers are told; an open request on the flag then conflicts."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from rollouts.change_control import applying, approving, kill_switch
from rollouts.models import FollowUp
from tests.rollouts.support import PROFILE, escalate, inbox, production, user

pytestmark = pytest.mark.django_db


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


def test_killswitch__fallback_follow_up_and_owner_and_approvers_told(demo) -> None:
    targeting = production(PROFILE)
    kill_switch.killswitch_flip(targeting=targeting, reason="hallucinated refunds", actor=user("operator"))
    assert production(PROFILE).enabled is False
    follow_up = FollowUp.objects.get()
    assert follow_up.kind == "killswitch" and follow_up.flag.key == PROFILE and follow_up.acknowledged_at is None
    title = "Kill switch: support_assistant_profile sent to baseline_v3 in Production"
    assert inbox("owner") == [title] and inbox("pm") == [title] and inbox("lead") == [title]
    assert inbox("operator") == []
    # Flipping an already-off flag is refused rather than recorded twice
    with pytest.raises(ValidationError, match="already off"):
        kill_switch.killswitch_flip(targeting=targeting, reason="again", actor=user("operator"))


def test_killswitch__open_request_on_the_flag_then_conflicts(demo) -> None:
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    kill_switch.killswitch_flip(targeting=production(), reason="incident", actor=user("operator"))
    result = applying.change_request_apply(change_request=change_request, actor=user("owner"))
    assert result.status == "conflicted" and production().enabled is False

