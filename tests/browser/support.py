"""Helpers of the browser journeys: the page-load check (an htmx swap keeps the page's marker, a
full load loses it), confirm() dialogs accepted, a flag's page, OFREP answers awaited (the
`ofrep` fixture in conftest.py calls OFREP over HTTP), screenshots for a human look, and the
change-control walks' proposal of write tools for beta accounts."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from playwright.sync_api import Dialog, Locator, Page, expect

from rollouts.change_control import applying, approving
from rollouts.models import ChangeRequest, RolloutPlan

PROJECT = "support-assistant"
TOOL_FLAG = "support_agent_tool_mode"
PROFILE_FLAG = "support_assistant_profile"
# Set to a directory to keep screenshots of the proposal preview and of the approved request,
# for a human look at those pages (they are not needed for the assertions).
REVIEW_SCREENSHOTS = os.environ.get("REVIEW_SCREENSHOTS_DIR", "")
BETA_WRITE_RULE = {"id": "beta", "description": "Beta accounts",
                   "clauses": [{"op": "in_segment", "values": ["beta_accounts"]}], "serve": {"variation": "write"}}
ESCALATION_REASON = "write (risk 4) becomes reachable; the riskiest served today is approval_required (risk 3)"
ESCALATION_LINE = "tool mode for beta_accounts (new rule): read_only (risk 1) → write (risk 4)"
INTERNAL_ACCOUNT = {"targetingKey": "acct-internal-001", "accountId": "acct-internal-001"}
Evaluate = Callable[[str, dict[str, Any]], dict[str, Any]]  # the `ofrep` fixture: (flag key, context) -> body


def wait_for_ofrep(evaluate: Evaluate, flag_key: str, context: dict[str, Any],
                   done: Callable[[dict[str, Any]], bool], *, since: float, within: float) -> tuple[dict[str, Any], float]:
    """Evaluate until `done(body)` or `within` seconds after `since` (time.monotonic());
    returns the last body and the seconds from `since` to that answer."""
    while True:
        body = evaluate(flag_key, context)
        elapsed = time.monotonic() - since
        if done(body) or elapsed >= within:
            return body, elapsed
        time.sleep(0.02)  # the bounded poll: at most `within` seconds in all


# --- page helpers ----------------------------------------------------------------------------


def set_page_marker(page: Page) -> None:
    """Mark the current document; a full page load replaces `window` and loses the mark."""
    page.evaluate("window.__marker = 1")


def assert_no_full_page_load(page: Page) -> None:
    assert page.evaluate("window.__marker") == 1, "the page was fully reloaded; expected an htmx swap"


def accept_dialogs(page: Page) -> list[str]:
    """Accept every confirm() the page raises; returns the list their messages go to."""
    seen: list[str] = []

    def accept(dialog: Dialog) -> None:
        seen.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    return seen


def open_flag(page: Page, flag_key: str) -> None:
    page.goto(f"/p/{PROJECT}/flags/{flag_key}/")
    expect(page.get_by_role("heading", name=flag_key, level=1)).to_be_visible()


def production_card(page: Page) -> Locator:
    return page.get_by_test_id("targeting-production")


def cr_url(change_request: ChangeRequest) -> str:
    return f"/p/{PROJECT}/changes/{change_request.pk}/"


def review_screenshot(page: Page, name: str) -> None:
    if REVIEW_SCREENSHOTS:
        page.screenshot(path=str(Path(REVIEW_SCREENSHOTS) / name), full_page=True)


def propose_beta_write(page: Page, reason: str, *, screenshot: str | None = None) -> ChangeRequest:
    """From the tool-mode flag page: "Propose a change" on Production, append the beta → write
    rule to the rules JSON (the rule editor's JSON view), check the live preview, give the reason and submit. Returns the
    change request, once its page is shown."""
    production_card(page).get_by_role("link", name="Propose a change").click()
    expect(page.get_by_role("heading", name=f"Propose a change to {TOOL_FLAG} in Production", level=1)).to_be_visible()
    verdict = page.get_by_test_id("preview-verdict")
    expect(verdict).to_have_text("No change yet: edit the targeting.")  # the preview loaded with the page

    # The user opens the rule editor's JSON view and appends the rule to the list there
    page.get_by_role("button", name="JSON", exact=True).click()
    rules = page.get_by_label("Rules (JSON)")
    current = json.loads(rules.input_value())
    assert [rule["id"] for rule in current] == ["internal"]
    rules.fill(json.dumps([*current, BETA_WRITE_RULE], indent=2))
    reason_field = page.get_by_label("Reason")
    reason_field.click()  # leaving the rules field ("change") refreshes the preview
    reason_field.fill(reason)

    # The preview says what the change needs, and why, in words
    expect(verdict).to_contain_text("This change needs 2 approvals")
    reasons = page.get_by_test_id("preview-reasons")
    escalation = reasons.locator("li").filter(has_text=ESCALATION_REASON)
    expect(escalation).to_have_count(1)
    expect(escalation.locator(".badge")).to_have_text("risk escalation")
    line = page.locator("#preview .diff-lines li").filter(has_text=ESCALATION_LINE)
    expect(line).to_have_text(ESCALATION_LINE)
    expect(line).to_have_class(re.compile(r"\bescalates\b"))
    if screenshot:
        review_screenshot(page, screenshot)

    page.get_by_role("button", name="Submit").click()
    expect(page).to_have_url(re.compile(rf"/p/{PROJECT}/changes/\d+/$"))
    change_request = ChangeRequest.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1]))
    expect(page.get_by_role("heading", name=f"CR-{change_request.pk}: {TOOL_FLAG} in Production", level=1)).to_be_visible()
    expect(page.locator("#messages")).to_contain_text(
        f"Change request CR-{change_request.pk} submitted: it needs 2 approval(s). Approvers have been notified.")
    expect(page.get_by_test_id("cr-approvals")).to_have_text("0 of 2")
    expect(page.get_by_test_id("cr-status")).to_have_text("Pending")
    expect(page.get_by_test_id("cr-diff")).to_contain_text(ESCALATION_LINE)
    return change_request


def through_approval(plan: RolloutPlan) -> RolloutPlan:
    """If the step opened a change request (production's policy: a widened audience needs an
    approval), the approvers approve it and the owner applies it, as in the console."""
    if plan.pending_change_request_id is None:
        return plan
    people = get_user_model().objects
    change_request = ChangeRequest.objects.get(pk=plan.pending_change_request_id)
    for approver in ("pm", "lead"):
        if ChangeRequest.objects.get(pk=change_request.pk).status == ChangeRequest.Status.PENDING:
            approving.change_request_approve(change_request=change_request, actor=people.get(username=approver),
                                             comment="set-up")
    applying.change_request_apply(change_request=change_request, actor=people.get(username="owner"))
    plan = RolloutPlan.objects.get(pk=plan.pk)  # the apply's on-commit hook moved it
    assert plan.pending_change_request_id is None, "the plan did not follow its applied change request"
    return plan
