"""Shared helpers of the change-control tests: the demo's production targeting of the tool
mode flag, demo users by name, and the escalation at the heart of the approvals issue."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from flags.models import Targeting
from rollouts.change_control import submitting
from rollouts.models import ChangeRequest

TOOL_MODE = "support_agent_tool_mode"
BETA_WRITE = {"id": "beta", "description": "beta_accounts", "clauses": [{"op": "in_segment", "values": ["beta_accounts"]}],
              "serve": {"variation": "write"}}


def user(name: str) -> Any:
    return get_user_model().objects.get(username=name)


def production(flag_key: str = TOOL_MODE) -> Targeting:
    return Targeting.objects.select_related("flag", "environment").get(flag__key=flag_key,
                                                                       environment__key="production")


def escalate(requester: str = "owner") -> ChangeRequest:
    targeting = production()
    return submitting.targeting_change_submit(targeting=targeting, changes={"rules": [*targeting.rules, BETA_WRITE]},
                                            reason="Let beta accounts write tickets", actor=user(requester))
