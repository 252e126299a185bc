"""The approval policy (rollouts/change_control/approval_policy.py): edited by admins only,
validated and audited; its numbers apply to the requests opened after."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from flags.models import Environment
from rollouts.change_control import approval_policy
from rollouts.models import ApprovalPolicy
from tests.rollouts.support import escalate, user

pytestmark = pytest.mark.django_db


def test_approval_policy__admin_only_validated_and_audited(demo) -> None:
    env = Environment.objects.get(key="production")
    with pytest.raises(ValidationError, match="admin"):
        approval_policy.approval_policy_update(environment=env, actor=user("owner"), approvals_for_escalation=1)
    for bad in ({"approvals_for_escalation": 0}, {"approvals_otherwise": "2"}, {"expire_after_days": 91},
                {"approvals_otherwise": 3}, {"nonsense": 1}):
        with pytest.raises(ValidationError):
            approval_policy.approval_policy_update(environment=env, actor=user("admin"), **bad)
    assert not ApprovalPolicy.objects.exists()
    approval_policy.approval_policy_update(environment=env, actor=user("admin"), approvals_for_escalation=3,
                                    approvals_otherwise=2, expire_after_days=3)
    event = AuditEvent.objects.get(action="approval_policy.updated")
    assert event.before["approvals_for_escalation"] == 2 and event.after["approvals_for_escalation"] == 3
    # The new numbers apply to requests opened from now on
    assert escalate().required_approvals == 3

