"""An escalation in a real browser, person by person (one browser context each): write tools for
beta accounts in production, proposed by the flag owner with the live preview, approved by two
approvers from their inbox (htmx, no page load), applied by the owner, then served over OFREP
(the `ofrep` fixture: the real WSGI application over HTTP, with a polling snapshot store)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from flags.models import Targeting
from rollouts.models import Approval
from tests.browser.support import (
    BETA_WRITE_RULE,
    ESCALATION_REASON,
    INTERNAL_ACCOUNT,
    TOOL_FLAG,
    Evaluate,
    accept_dialogs,
    assert_no_full_page_load,
    cr_url,
    open_flag,
    propose_beta_write,
    review_screenshot,
    set_page_marker,
    wait_for_ofrep,
)

pytestmark = pytest.mark.browser
BETA_ACCOUNT = {"targetingKey": "acct-beta-101", "accountId": "acct-beta-101"}
OTHER_ACCOUNT = {"targetingKey": "acct-other-555", "accountId": "acct-other-555"}


def test_escalation_walk__owner_proposes_two_approvers_approve_owner_applies__ofrep_serves_write_to_beta(
    as_user: Callable[[str], Page], ofrep: Evaluate, record_property: Callable[[str, object], None],
) -> None:
    # Given production serves read_only to beta accounts (approval_required is the riskiest served)
    assert ofrep(TOOL_FLAG, BETA_ACCOUNT)["value"] == "read_only"
    version_before = Targeting.objects.get(flag__key=TOOL_FLAG, environment__key="production").version

    # When the flag owner proposes, on Production, a rule serving write to beta accounts
    owner = as_user("owner")
    open_flag(owner, TOOL_FLAG)
    change_request = propose_beta_write(owner, "Beta accounts asked to let the agent file tickets itself.",
                                        screenshot="propose.png")

    # Then a pending request needing two approvals exists, and production is untouched
    change_request.refresh_from_db()
    assert (change_request.status, change_request.required_approvals, change_request.escalation) == ("pending", 2, True)
    assert change_request.requester.get_username() == "owner"
    assert Targeting.objects.get(flag__key=TOOL_FLAG, environment__key="production").version == version_before

    # When pm, an approver, logs in
    pm = as_user("pm")

    # Then the nav shows one change request waiting for them, and the inbox lists it
    waiting = pm.locator("#nav-approvals")
    expect(waiting).to_contain_text("Change requests")
    expect(waiting.locator(".count")).to_have_text("1")
    waiting.click()
    expect(pm.get_by_role("heading", name="Change requests", level=1)).to_be_visible()
    waiting_table = pm.locator("#waiting + table")
    expect(waiting_table.locator("tbody tr")).to_have_count(1)
    expect(waiting_table).to_contain_text("risk escalation")
    waiting_table.get_by_role("link", name=f"CR-{change_request.pk}", exact=True).click()
    expect(pm).to_have_url(re.compile(rf"{cr_url(change_request)}$"))
    expect(pm.get_by_test_id("cr-reasons")).to_contain_text(ESCALATION_REASON)

    # When pm approves with a comment
    set_page_marker(pm)
    pm.get_by_label("Comment (optional)").fill("OK for the beta cohort; we watch the ticket audit log.")
    pm.get_by_role("button", name="Approve").click()

    # Then the request counts one of two approvals, swapped in by htmx (no page load)
    expect(pm.get_by_test_id("cr-approvals")).to_have_text("1 of 2")
    expect(pm.get_by_test_id("cr-status")).to_have_text("Pending")
    expect(pm.get_by_test_id("cr-timeline")).to_contain_text("OK for the beta cohort; we watch the ticket audit log.")
    expect(pm.get_by_test_id("cr-timeline").locator("li").first).to_contain_text("pm approved")
    expect(pm.locator("#messages")).to_have_text("Your approval is recorded (1 of 2): it still needs 1 more.")
    expect(pm.get_by_role("button", name="Approve")).to_have_count(0)
    expect(pm.get_by_text("You have decided on this version.")).to_be_visible()
    # and nothing waits for pm any more: the nav's count went with the same response
    expect(pm.locator("#nav-approvals")).to_have_text("Change requests")
    assert_no_full_page_load(pm)

    # When lead, the second approver, opens it from the nav and approves
    lead = as_user("lead")
    expect(lead.locator("#nav-approvals .count")).to_have_text("1")
    lead.goto(cr_url(change_request))
    expect(lead.get_by_test_id("cr-approvals")).to_have_text("1 of 2")
    set_page_marker(lead)
    lead.get_by_role("button", name="Approve").click()

    # Then it has two of two and is approved
    expect(lead.get_by_test_id("cr-approvals")).to_have_text("2 of 2")
    expect(lead.get_by_test_id("cr-status")).to_have_text("Approved")
    expect(lead.locator("#messages")).to_have_text(
        "Approved: 2 of 2 approvals. The requester or an editor can apply it now.")
    expect(lead.locator("#nav-approvals")).to_have_text("Change requests")
    assert_no_full_page_load(lead)
    change_request.refresh_from_db()
    assert change_request.status == "approved"
    assert sorted(a.approver.get_username() for a in Approval.objects.filter(change_request=change_request)) == [
        "lead", "pm"]

    # When the owner opens the request and clicks "Apply now", confirming
    owner.goto(cr_url(change_request))
    expect(owner.get_by_test_id("cr-approvals")).to_have_text("2 of 2")
    expect(owner.get_by_test_id("cr-status")).to_have_text("Approved")
    review_screenshot(owner, "cr_page.png")
    dialogs = accept_dialogs(owner)
    set_page_marker(owner)
    owner.get_by_role("button", name="Apply now").click()
    applied_at = time.monotonic()

    # Then the request is applied, in place, with a success message
    expect(owner.get_by_test_id("cr-status")).to_have_text("Applied")
    expect(owner.locator("#messages")).to_contain_text("Applied: the change is live.")
    expect(owner.get_by_role("button", name="Apply now")).to_have_count(0)
    assert_no_full_page_load(owner)
    assert dialogs == [f"Apply CR-{change_request.pk} to Production now?"]
    targeting = Targeting.objects.get(flag__key=TOOL_FLAG, environment__key="production")
    assert targeting.rules[-1] == BETA_WRITE_RULE and targeting.version == version_before + 1

    # And OFREP serves write to a beta account, and still read_only to anyone else
    body, elapsed = wait_for_ofrep(ofrep, TOOL_FLAG, BETA_ACCOUNT, lambda b: b.get("value") == "write",
                                   since=applied_at, within=5.0)
    record_property("apply_to_ofrep_seconds", round(elapsed, 3))
    assert (body["value"], body["reason"], body["metadata"].get("ruleId")) == ("write", "TARGETING_MATCH", "beta"), (
        f"OFREP still served {body} {elapsed:.3f} s after Apply now")
    assert ofrep(TOOL_FLAG, OTHER_ACCOUNT)["value"] == "read_only"
    assert ofrep(TOOL_FLAG, INTERNAL_ACCOUNT)["value"] == "approval_required"

    # And the owner was told of the approval in the console's notifications inbox
    response = owner.goto("/notifications/")
    assert response is not None
    if response.status != 404:  # the inbox is built concurrently; without it, only this check is skipped
        notification = owner.get_by_test_id("notification").filter(
            has_text=f"Approved: CR-{change_request.pk} {TOOL_FLAG} in Production")
        expect(notification).to_have_count(1)
        expect(notification).to_have_attribute("data-unread", "true")

