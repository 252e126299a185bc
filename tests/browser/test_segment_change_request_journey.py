"""A segment production uses, changed through a change request in a real browser, person by
person (one browser context each): the flag owner adds an account to internal_users from the
segments page (first without a reason, which the form refuses in place), lands on the new
request; pm approves it from the inbox; the owner applies it, and the segments page shows the
new account."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from flags.models import Segment
from rollouts.models import ChangeRequest
from tests.browser.support import accept_dialogs, assert_no_full_page_load, set_page_marker

pytestmark = pytest.mark.browser

PROJECT = "support-assistant"
SEGMENT = "internal_users"
NEW_KEY = "acct-internal-003"
REASON = "Aisha joined the support team and needs the internal tools."


def internal_users() -> Segment:
    return Segment.objects.get(project__key=PROJECT, key=SEGMENT)


def test_segment_walk__owner_widens_internal_users_pm_approves_owner_applies__segments_page_shows_the_key(
    as_user: Callable[[str], Page], tmp_path: Path,
) -> None:
    # Given internal_users as production uses it
    version_before = internal_users().version
    assert NEW_KEY not in internal_users().included_keys

    # When the owner opens the segments page
    owner = as_user("owner")
    owner.goto(f"/p/{PROJECT}/segments/")
    row = owner.get_by_test_id(f"segment-{SEGMENT}")
    # Then the segment offers Edit but no Delete (production uses it)
    expect(row.get_by_role("link", name="Edit")).to_be_visible()
    expect(row.get_by_role("button", name="Delete")).to_have_count(0)
    expect(row).to_contain_text("support_agent_tool_mode in Production")

    # When they open it
    row.get_by_role("link", name="Edit").click()
    expect(owner.get_by_role("heading", name=f"Edit segment {SEGMENT}", level=1)).to_be_visible()
    # Then the page says where it decides who is served, and that widening or narrowing it there needs approval
    expect(owner.get_by_test_id("segment-governed-notice")).to_contain_text(
        "decides who Production serves for support_agent_tool_mode and support_assistant_profile: a change that "
        "widens or narrows it there needs approval")

    # When they add an account and submit without a reason
    included = owner.get_by_label("Included keys")
    included.fill(f"{included.input_value().strip()}\n{NEW_KEY}")
    set_page_marker(owner)
    owner.get_by_role("button", name="Submit").click()
    # Then the form comes back in place with the error beside the reason, keeping what they typed
    reason_field = owner.locator(".field").filter(has=owner.get_by_label("Reason"))
    expect(reason_field.locator(".errorlist")).to_have_text("Say why: the reason stays with the change in the audit "
                                                            "trail.")
    expect(owner.get_by_label("Included keys")).to_have_value(re.compile(rf"{NEW_KEY}$"))
    assert_no_full_page_load(owner)
    assert not ChangeRequest.objects.exists()

    # When they give the reason and submit again
    owner.get_by_label("Reason").fill(REASON)
    owner.get_by_role("button", name="Submit").click()

    # Then they land on the new request, which waits for one approval; the segment is unchanged
    expect(owner).to_have_url(re.compile(rf"/p/{PROJECT}/changes/\d+/$"))
    change_request = ChangeRequest.objects.get()
    cr_path = f"/p/{PROJECT}/changes/{change_request.pk}/"
    expect(owner.get_by_role("heading", level=1)).to_have_text(
        f"CR-{change_request.pk}: segment {SEGMENT} in every governed environment using it")
    expect(owner.locator("#messages")).to_contain_text(f"CR-{change_request.pk} opened: waits for 1 approval.")
    expect(owner.get_by_test_id("cr-status")).to_have_text("Pending")
    expect(owner.get_by_test_id("cr-approvals")).to_have_text("0 of 1")
    expect(owner.get_by_test_id("cr-diff")).to_contain_text(f"segment {SEGMENT}: 1 key(s) included: {NEW_KEY}")
    expect(owner.get_by_test_id("cr-shortfall")).to_have_count(0)  # pm and lead can approve it
    owner.screenshot(path=str(tmp_path / "segment_change_request.png"), full_page=True)
    assert (change_request.kind, change_request.flag_id, change_request.reason) == ("segment", None, REASON)
    assert internal_users().version == version_before and NEW_KEY not in internal_users().included_keys

    # When pm, an approver, follows the nav to the inbox
    pm = as_user("pm")
    expect(pm.locator("#nav-approvals .count")).to_have_text("1")
    pm.locator("#nav-approvals").click()
    waiting = pm.locator("#waiting + table")
    expect(waiting.locator("tbody tr")).to_have_count(1)
    # Then the request is named by its segment, and opens from there
    expect(waiting.get_by_role("link", name=f"segment {SEGMENT}")).to_be_visible()
    waiting.get_by_role("link", name=f"CR-{change_request.pk}", exact=True).click()
    expect(pm).to_have_url(re.compile(rf"{cr_path}$"))

    # When pm approves it
    set_page_marker(pm)
    pm.get_by_label("Comment (optional)").fill("Welcome, Aisha.")
    pm.get_by_role("button", name="Approve").click()
    # Then it is approved, in place
    expect(pm.get_by_test_id("cr-approvals")).to_have_text("1 of 1")
    expect(pm.get_by_test_id("cr-status")).to_have_text("Approved")
    assert_no_full_page_load(pm)

    # When the owner reloads the request and applies it, confirming
    owner.goto(cr_path)
    expect(owner.get_by_test_id("cr-status")).to_have_text("Approved")
    dialogs = accept_dialogs(owner)
    owner.get_by_role("button", name="Apply now").click()
    # Then it is applied
    expect(owner.get_by_test_id("cr-status")).to_have_text("Applied")
    expect(owner.locator("#messages")).to_contain_text("Applied: the change is live.")
    assert dialogs == [f"Apply CR-{change_request.pk} to every governed environment using it now?"]
    owner.screenshot(path=str(tmp_path / "segment_change_request_applied.png"), full_page=True)

    # And the segments page, reached from the request's crumbs, shows the new account
    owner.locator(".crumbs").get_by_role("link", name="Segments").click()
    expect(owner.get_by_role("heading", name="Segments", level=1)).to_be_visible()
    expect(owner.get_by_test_id(f"segment-{SEGMENT}")).to_contain_text(NEW_KEY)
    segment = internal_users()
    assert segment.included_keys == ["acct-internal-001", "acct-internal-002", NEW_KEY]
    assert segment.version == version_before + 1
