"""Regressions from a review of the change-control code: each test fails if the hole reopens."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from flags import services as flag_services
from flags.constants import LifecycleStage, Role
from flags.models import Flag, Targeting, Variation
from rollouts.change_control import applying, approval_policy, approving, incident_mode, kill_switch
from rollouts.models import ChangeRequest, FollowUp
from tests.factories import TEST_ACTOR
from tests.rollouts.support import escalate, production, user

pytestmark = pytest.mark.django_db
FLAG = "/p/support-assistant/flags/support_agent_tool_mode/"
PROFILE = "/p/support-assistant/flags/support_assistant_profile/"
HTMX = {"HX-Request": "true"}


def staging() -> Targeting:
    return Targeting.objects.get(flag__key="support_agent_tool_mode", environment__key="staging")


def test_operator__cannot_edit_non_governed_targeting_through_the_proposal_page(client: Any, demo: Any) -> None:
    # Given an operator, who may flip kill switches but not edit targeting
    targeting = staging()
    client.force_login(user("operator"))
    data = {"enabled": "on", "assignment_unit": "accountId", "default_variation": "write",
            "rules": json.dumps(targeting.rules), "version": str(targeting.version), "reason": "x"}
    # When they post a proposal for staging
    response = client.post(f"{FLAG}propose/staging/", data)
    # Then it is refused and staging is unchanged
    assert response.status_code == 403
    assert staging().default_serve == {"variation": "read_only"}


def test_lowering_a_risk_rank__is_a_flag_wide_request_not_a_quiet_edit(client: Any, demo: Any) -> None:
    client.force_login(user("owner"))
    # The plain editor refuses it for a flag that serves in production
    plain = client.post(f"{FLAG}variations/write/edit/",
                        {"name": "Write tools", "value": "write", "description": "", "risk_rank": "0"}, headers=HTMX)
    assert plain.status_code == 403
    # The governed editor turns it into a request, with the reason
    response = client.post(f"{FLAG}variations/write/change/",
                           {"name": "Write tools", "value": "write", "description": "", "risk_rank": "0",
                            "reason": "write is safe now"}, headers=HTMX)
    change_request = ChangeRequest.objects.get()
    assert response["HX-Redirect"].endswith(f"/changes/{change_request.pk}/")
    assert change_request.proposed == {"risk_ranks": {"write": 0}}
    assert [r["code"] for r in change_request.reasons] == ["risk_lowered"]
    assert Variation.objects.get(flag__key="support_agent_tool_mode", key="write").risk_rank == 4
    # so the escalation still needs two approvals
    assert escalate().required_approvals == 2
    # raising a rank (safer) saves at once
    client.post(f"{FLAG}variations/none/change/",
                {"name": "No tools", "value": "none", "description": "", "risk_rank": "1"}, headers=HTMX)
    assert Variation.objects.get(flag__key="support_agent_tool_mode", key="none").risk_rank == 1


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


def test_incident_lift__a_flag_that_may_no_longer_go_on_is_left_the_rest_restored(demo: Any) -> None:
    environment = production().environment
    incident = incident_mode.incident_start(environment=environment, surfaces=[], reason="outage", actor=user("operator"))
    # During the incident the profile flag (cleanup due) is archived
    profile = Flag.objects.get(key="support_assistant_profile")
    Flag.objects.filter(pk=profile.pk).update(stage=LifecycleStage.CLEANUP_DUE)
    profile.refresh_from_db()
    flag_services.targeting_update(targeting=profile.targetings.get(environment__key="development"),
                                   actor=TEST_ACTOR, enabled=False)
    flag_services.targeting_update(targeting=profile.targetings.get(environment__key="staging"),
                                   actor=TEST_ACTOR, enabled=False)
    flag_services.flag_archive(flag=profile, actor=TEST_ACTOR, reason="replaced")
    lifted = incident_mode.incident_lift(incident=incident, reason="provider back", actor=user("operator"))
    assert lifted.restored == ["support_agent_tool_mode"] and lifted.left == ["support_assistant_profile"]
    assert production().enabled is True


def test_restore_of_a_retired_flag__stays_off_in_governed_environments(demo: Any) -> None:
    profile = Flag.objects.get(key="support_assistant_profile")
    Flag.objects.filter(pk=profile.pk).update(stage=LifecycleStage.CLEANUP_DUE)
    profile.refresh_from_db()
    flag_services.flag_archive(flag=profile, actor=TEST_ACTOR, reason="done")
    Flag.objects.filter(pk=profile.pk).update(served_until=timezone.now())
    flag_services.retire_archived_flags(actor=TEST_ACTOR)
    flag_services.flag_restore(flag=profile, actor=TEST_ACTOR, reason="needed after all")
    assert production("support_assistant_profile").enabled is False  # back on only through a request
    assert profile.targetings.get(environment__key="development").enabled is True


def test_change_request_page_and_panel__queries_do_not_grow_with_approvals_and_follow_ups(client: Any,
                                                                                          demo: Any) -> None:
    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured.captured_queries)

    # Three approvals needed, so both counts are taken on a pending page (a pending page also
    # checks that enough approvers exist)
    approval_policy.approval_policy_update(environment=production().environment, actor=user("admin"),
                                    approvals_for_escalation=3)
    change_request = escalate()
    client.force_login(user("admin"))
    url = f"/p/support-assistant/changes/{change_request.pk}/"
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    one = count(url)
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    assert count(url) == one
    kill_switch.killswitch_flip(targeting=production("support_assistant_profile"), reason="a", actor=user("operator"))
    panel_one = count(f"{PROFILE}change-control/")
    incident_mode.incident_start(environment=production().environment, surfaces=[], reason="b", actor=user("operator"))
    FollowUp.objects.update(flag=Flag.objects.get(key="support_assistant_profile"))
    assert FollowUp.objects.count() == 2
    assert count(f"{PROFILE}change-control/") == panel_one
