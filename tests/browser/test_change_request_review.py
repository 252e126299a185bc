"""Reviewing a change request in a real browser: the owner proposes write tools for beta
accounts in production; lead, an approver, opens it and sees the change in words, the served
state as a JSON line diff and the share of today's accounts it would move; comments; tries
to reject without a reason (refused beside the comment field), then rejects with one. With a
word of a thousand characters in the reason and the comment, nothing is wider than 1280 px
and the decision buttons stay on screen."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from audit.constants import AuditAction
from audit.models import AuditEvent
from flags.models import Segment
from rollouts.models import ChangeRequest
from telemetry.models import UnitExposure
from tests.browser.support import (
    ESCALATION_LINE,
    TOOL_FLAG,
    accept_dialogs,
    assert_no_full_page_load,
    cr_url,
    open_flag,
    propose_beta_write,
    review_screenshot,
    set_page_marker,
)

pytestmark = pytest.mark.browser
WIDTH = 1280
LONG_WORD = "x" * 1000


def seen_today(change_request: ChangeRequest) -> tuple[int, int, int]:
    """Accounts seen in production today: the beta accounts the segment lists, an internal
    account, the excluded beta account and accounts nobody knows the plan of. Returns (units,
    known to change, unknown) as the setup decides them."""
    beta = Segment.objects.get(key="beta_accounts")
    internal = Segment.objects.get(key="internal_users").included_keys[:1]
    others = [f"acct-other-{n}" for n in range(15)]
    rows = [(u, "read_only") for u in [*beta.included_keys, *beta.excluded_keys, *others]]
    rows += [(u, "approval_required") for u in internal]
    now = timezone.now()
    UnitExposure.objects.bulk_create([
        UnitExposure(flag_id=change_request.flag_id, environment_id=change_request.environment_id, variant=variant,
                     unit=unit, first_seen=now, last_seen=now) for unit, variant in rows])
    return len(rows), len(beta.included_keys), len(others)


def share(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}".removesuffix(".0")


def assert_fits(page: Page) -> None:
    """Nothing wider than the window; the decision buttons inside it."""
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
    for name in ("Approve", "Reject", "Apply now"):
        for button in page.get_by_role("button", name=name, exact=True).all():
            box = button.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= WIDTH, name


def test_review_walk__words_json_estimate__reject_needs_a_reason__long_words_wrap(
    as_user: Callable[[str], Page],
) -> None:
    # Given the owner proposes write tools for beta accounts, with a very long word in the reason
    owner = as_user("owner")
    open_flag(owner, TOOL_FLAG)
    change_request = propose_beta_write(owner, f"Beta accounts asked for ticket writes. {LONG_WORD}")
    units, changed, unknown = seen_today(change_request)

    # When lead, an approver, opens it at 1280 px
    lead = as_user("lead")
    lead.set_viewport_size({"width": WIDTH, "height": 900})
    lead.goto(cr_url(change_request))
    expect(lead.get_by_role("heading", name=f"CR-{change_request.pk}: {TOOL_FLAG} in Production", level=1)).to_be_visible()

    # Then the change reads in words, the served state as a JSON line diff, and the estimate
    expect(lead.get_by_test_id("cr-diff")).to_contain_text(ESCALATION_LINE)
    json_diff = lead.get_by_test_id("cr-json-diff")
    expect(json_diff.locator(".json-added").filter(has_text='"variation": "write"')).to_have_count(1)
    expect(json_diff.locator(".json-added").first).to_contain_text("+ ")
    expect(lead.get_by_test_id("cr-estimate")).to_have_text(
        f"Units affected: {share(changed, units)} % of {units} units seen in the last day would get a different "
        f"variation ({share(unknown, units)} % depend on attributes not recorded): between {share(changed, units)} % "
        f"and {share(changed + unknown, units)} %.")
    expect(lead.get_by_test_id("cr-reason")).to_contain_text(LONG_WORD)
    assert_fits(lead)
    review_screenshot(lead, "review-opened.png")

    # When lead comments, with a long word too
    set_page_marker(lead)
    lead.locator("#id_comment_body").fill(f"Which accounts exactly? {LONG_WORD}")
    lead.get_by_role("button", name="Comment", exact=True).click()

    # Then the comment is in the discussion, who and when, swapped in by htmx
    entry = lead.get_by_test_id("cr-discussion-entry")
    expect(entry).to_have_count(1)
    expect(entry).to_contain_text("lead commented")
    expect(entry.locator("time")).to_have_count(1)
    assert_no_full_page_load(lead)
    assert_fits(lead)

    # When lead rejects without a reason
    dialogs = accept_dialogs(lead)
    lead.get_by_role("button", name="Reject", exact=True).click()

    # Then it is refused beside the comment field, and nothing is recorded
    field = lead.locator(".field").filter(has=lead.get_by_label("Comment (optional)"))
    expect(field).to_contain_text("Say why you reject it")
    expect(lead.get_by_test_id("cr-status")).to_have_text("Pending")
    assert dialogs == [f"Reject CR-{change_request.pk}? Any rejection closes the request."]
    assert not change_request.approvals.exists()
    assert not AuditEvent.objects.filter(action=AuditAction.CHANGE_REQUEST_REJECTED).exists()
    review_screenshot(lead, "review-reject-refused.png")

    # When lead gives the reason, a long one, and rejects
    reason = f"Not before the ticket audit log exists. {LONG_WORD}"
    lead.get_by_label("Comment (optional)").fill(reason)
    assert_fits(lead)
    lead.get_by_role("button", name="Reject", exact=True).click()

    # Then the request is rejected, the reason shown and recorded, and still nothing overflows
    expect(lead.get_by_test_id("cr-status")).to_have_text("Rejected")
    expect(lead.get_by_test_id("cr-rejection")).to_contain_text("Rejected by lead: Not before the ticket audit log")
    expect(lead.get_by_test_id("cr-discussion-entry")).to_have_count(2)
    expect(lead.get_by_test_id("cr-discussion-entry").nth(1)).to_contain_text(re.compile(r"lead\s+rejected"))
    assert AuditEvent.objects.get(action=AuditAction.CHANGE_REQUEST_REJECTED).reason == reason
    assert_no_full_page_load(lead)
    assert_fits(lead)
    review_screenshot(lead, "review-rejected.png")
