"""Follow-ups (rollouts/change_control/follow_ups.py): a move to the fallback stays open until a
second person with a role in change control acknowledges it with a note."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from rollouts.change_control import follow_ups, kill_switch
from rollouts.models import FollowUp
from tests.rollouts.support import PROFILE, production, user

pytestmark = pytest.mark.django_db


def test_follow_up__acknowledged_by_a_second_person_with_a_note(demo) -> None:
    kill_switch.killswitch_flip(targeting=production(PROFILE), reason="bad answers", actor=user("operator"))
    follow_up = FollowUp.objects.get()
    with pytest.raises(ValidationError, match="someone else"):
        follow_ups.follow_up_acknowledge(follow_up=follow_up, note="fine", actor=user("operator"))
    with pytest.raises(ValidationError, match="role"):
        follow_ups.follow_up_acknowledge(follow_up=follow_up, note="fine", actor=user("auditor"))
    with pytest.raises(ValidationError):
        follow_ups.follow_up_acknowledge(follow_up=follow_up, note=" ", actor=user("pm"))
    follow_ups.follow_up_acknowledge(follow_up=follow_up, note="Prompt regression; fix in v5", actor=user("pm"))
    follow_up.refresh_from_db()
    assert follow_up.acknowledged_by == user("pm") and follow_up.note == "Prompt regression; fix in v5"
    assert AuditEvent.objects.filter(action="follow_up.acknowledged").count() == 1
    with pytest.raises(ValidationError, match="already"):
        follow_ups.follow_up_acknowledge(follow_up=follow_up, note="again", actor=user("lead"))

