"""Shared helpers of the change-control tests: the demo's production targeting of the tool
mode flag, demo users by name (and the test client signed in as one), the escalation at the
heart of the approvals issue, the proposal form's data, the audit rows since a mark, and the
titles of someone's notifications."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model

from audit.constants import AuditAction
from audit.models import AuditEvent
from flags.models import Targeting
from notifications.models import Notification
from rollouts.change_control import submitting
from rollouts.models import ChangeRequest

TOOL_MODE = "support_agent_tool_mode"
PROFILE = "support_assistant_profile"
FLAG_PAGE = "/p/support-assistant/flags/support_agent_tool_mode/"
PROFILE_PAGE = "/p/support-assistant/flags/support_assistant_profile/"
BETA_WRITE = {"id": "beta", "description": "beta_accounts", "clauses": [{"op": "in_segment", "values": ["beta_accounts"]}],
              "serve": {"variation": "write"}}


def user(name: str) -> Any:
    return get_user_model().objects.get(username=name)


def inbox(name: str) -> list[str]:
    return list(Notification.objects.filter(recipient=user(name)).values_list("title", flat=True))


def as_user(client: Any, person: str | Any) -> Any:
    client.force_login(user(person) if isinstance(person, str) else person)
    return client


def production(flag_key: str = TOOL_MODE) -> Targeting:
    return Targeting.objects.select_related("flag", "environment").get(flag__key=flag_key,
                                                                       environment__key="production")


def escalate(requester: str = "owner") -> ChangeRequest:
    targeting = production()
    return submitting.targeting_change_submit(targeting=targeting, changes={"rules": [*targeting.rules, BETA_WRITE]},
                                            reason="Let beta accounts write tickets", actor=user(requester))


def propose_data(**overrides: Any) -> dict[str, Any]:
    targeting = production()
    data = {"enabled": "on", "assignment_unit": "accountId", "default_variation": "read_only",
            "rules": json.dumps([*targeting.rules, BETA_WRITE]), "version": str(targeting.version),
            "reason": "Beta accounts asked for ticket writes"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def events_since(mark: int) -> list[AuditEvent]:
    """What was recorded after `mark` (tests.flags.support.audit_mark), except signing in
    (force_login is audited too)."""
    return list(AuditEvent.objects.filter(id__gt=mark).exclude(action=AuditAction.LOGIN_SUCCEEDED).order_by("id"))
