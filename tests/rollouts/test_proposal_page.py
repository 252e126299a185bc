"""Proposing a change in a governed environment (rollouts/views.py): the flag page offers the
proposal to editors and the kill switch to operators; the preview says what submitting would
do; a risky proposal opens a change request, a safer one applies at once; bad input stays
beside its field; operators roll back from the same page, and edit nothing else through it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from audit.models import AuditEvent
from flags.models import Targeting
from rollouts.models import ChangeRequest
from tests.flags.support import HTMX
from tests.rollouts.support import FLAG_PAGE as FLAG
from tests.rollouts.support import PROFILE_PAGE as PROFILE
from tests.rollouts.support import as_user, production, propose_data, user

pytestmark = pytest.mark.django_db


def test_flag_page__governed_card_offers_proposal_to_owner_and_kill_switch_to_operator(client, demo) -> None:
    page = as_user(client, "owner").get(FLAG).content.decode()
    assert f"{FLAG}propose/production/" in page and "Kill switch…" not in page
    page = as_user(client, "operator").get(FLAG).content.decode()
    assert f"{FLAG}killswitch/production/" in page and "Propose a change" not in page and "Roll back…" in page
    page = as_user(client, "auditor").get(FLAG).content.decode()
    assert "propose/production" not in page and "killswitch/" not in page


def test_preview__needs_two_approvals_because_escalation(client, demo) -> None:
    response = as_user(client, "owner").post(f"{FLAG}propose/production/preview/", propose_data(reason=""),
                                             headers=HTMX)
    text = response.content.decode()
    assert response.status_code == 200
    assert "This change needs 2 approvals" in text and "write (risk 4) becomes reachable" in text
    assert "tool mode for beta_accounts (new rule): read_only (risk 1) → write (risk 4)" in text
    broken = as_user(client, "owner").post(f"{FLAG}propose/production/preview/", propose_data(rules="[{"),
                                           headers=HTMX)
    assert "Not valid JSON" in broken.content.decode()
    assert not ChangeRequest.objects.exists()


def test_preview__too_few_other_approvers__says_so_before_submitting(client, demo) -> None:
    # Given lead, one of the project's two approvers, proposes an escalation needing two
    shown = as_user(client, "lead").post(f"{FLAG}propose/production/preview/", propose_data(reason=""),
                                         headers=HTMX).content.decode()
    # Then the preview says it could never be approved as things stand
    assert 'data-testid="preview-shortfall"' in shown and "Only 1 person besides you holds the approver role" in shown
    # while the owner, whom both approvers can approve, sees no such warning
    shown = as_user(client, "owner").post(f"{FLAG}propose/production/preview/", propose_data(reason=""),
                                          headers=HTMX).content.decode()
    assert "This change needs 2 approvals" in shown and "preview-shortfall" not in shown


def test_propose__submits_a_change_request_and_shows_its_page(client, demo) -> None:
    before = production().version
    response = as_user(client, "owner").post(f"{FLAG}propose/production/", propose_data())
    change_request = ChangeRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/p/support-assistant/changes/{change_request.pk}/"
    assert production().version == before
    page = client.get(response["Location"]).content.decode()
    assert "0 of 2" in page and "tool mode for beta_accounts (new rule): read_only (risk 1) → write (risk 4)" in page
    assert "a second person must approve it" in page  # the requester sees no approve button


@pytest.mark.parametrize(("overrides", "field_error"), [
    ({"reason": ""}, "This field is required."),
    ({"rules": "[{\"clauses\": 1}]"}, "rules"),
    ({"version": "1"}, "changed since you opened it"),
    ({"default_variation": "no_such"}, "Select a valid choice"),
])
def test_propose__bad_input__422_beside_the_field_nothing_written(client, demo, overrides, field_error) -> None:
    as_user(client, "owner")
    before = AuditEvent.objects.count()
    response = client.post(f"{FLAG}propose/production/", propose_data(**overrides))
    assert response.status_code == 422 and field_error in response.content.decode()
    assert AuditEvent.objects.count() == before and not ChangeRequest.objects.exists()


def test_propose__safer_change_applies_at_once(client, demo) -> None:
    response = as_user(client, "owner").post(f"{FLAG}propose/production/",
                                             propose_data(rules="[]", reason="internal trial over"))
    assert response.status_code == 302 and response["Location"].endswith("#env-production")
    assert production().rules == [] and not ChangeRequest.objects.exists()


def test_operator__rolls_back_from_the_proposal_page(client, demo) -> None:
    page = as_user(client, "operator").get(PROFILE).content.decode()
    assert "Roll back…" in page and f"{PROFILE}propose/production/" in page
    form = client.get(f"{PROFILE}propose/production/").content.decode()
    assert "As an operator you can move traffic towards the fallback" in form
    targeting = production("support_assistant_profile")
    rules = [dict(rule) for rule in targeting.rules]
    rules[1]["serve"] = {"variation": "baseline_v3"}
    data = {"enabled": "on", "assignment_unit": "accountId", "default_variation": "baseline_v3",
            "rules": json.dumps(rules), "version": str(targeting.version), "reason": "stale citations"}
    assert client.post(f"{PROFILE}propose/production/", data).status_code == 302
    assert production("support_assistant_profile").rules[1]["serve"] == {"variation": "baseline_v3"}
    escalation = propose_data(reason="more tools")
    response = client.post(f"{FLAG}propose/production/", escalation)
    assert response.status_code == 422 and "Operators move traffic towards the fallback only" in response.content.decode()


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

