"""No self-approval, in a real browser: lead, an editor who is also an approver, proposes an
escalation in production; their own request page offers no way to approve it, and the approval
they forge from their logged-in session (CSRF token and all) is refused by the service."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from rollouts.models import Approval
from tests.browser.support import TOOL_FLAG, cr_url, open_flag, propose_beta_write

pytestmark = pytest.mark.browser


def test_self_approval__lead_requests_then_approves_own_request__no_button_and_forged_post_refused_422(
    as_user: Callable[[str], Page], live_server: Any,
) -> None:
    # Given lead, an editor who is also an approver, proposed the escalation in production
    lead = as_user("lead")
    open_flag(lead, TOOL_FLAG)
    change_request = propose_beta_write(lead, "Beta accounts need ticket writes for the pilot.")

    # Then their own request page offers no way to approve it, and says why
    expect(lead.get_by_test_id("self-approval-note")).to_have_text(
        "You requested this change: a second person must approve it.")
    expect(lead.get_by_role("button", name="Approve")).to_have_count(0)
    expect(lead.get_by_role("button", name="Reject")).to_have_count(0)
    expect(lead.get_by_label("Comment (optional)")).to_have_count(0)
    # (the request does not wait for its own requester either)
    expect(lead.locator("#nav-approvals")).to_have_text("Change requests")

    # When they forge the approval htmx would send, from their logged-in session with its CSRF token
    token = json.loads(lead.locator("body").get_attribute("hx-headers") or "{}")["X-CSRFToken"]
    response = lead.request.post(
        f"{live_server.url}{cr_url(change_request)}approve/",
        form={"comment": "Looks fine to me"},
        headers={"X-CSRFToken": token, "HX-Request": "true", "Referer": lead.url},
    )

    # Then the service refuses it with 422 (not the CSRF check, not the role check)
    assert response.status == 422
    assert "You cannot approve your own request" in html.unescape(response.text())

    # And no approval was recorded; the request still waits for two other people
    assert not Approval.objects.filter(change_request=change_request).exists()
    change_request.refresh_from_db()
    assert change_request.status == "pending"
    lead.reload()
    expect(lead.get_by_test_id("cr-approvals")).to_have_text("0 of 2")

