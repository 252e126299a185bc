"""Change control in a real browser, person by person (one browser context each): an
escalation in production proposed by the flag owner, approved by two approvers and applied,
then served over OFREP; an editor who is also an approver cannot approve their own request,
neither in the page nor by a forged POST; and an operator's kill switch, which needs no
approval, reaches OFREP within a second and leaves a follow-up that an approver acknowledges.

OFREP is called over HTTP on loopback, on the project's real WSGI application
(`featureops_site.wsgi.application`, the one gunicorn serves). pytest-django's `live_server`
cannot be used for it: it serves Django's plain WSGI handler, and `/ofrep/v1/...` is not a
Django URL but a lean WSGI app placed in front of Django in `featureops_site/wsgi.py`. That
app reads in-process snapshots refreshed by a poller thread; the test settings switch the
poller off (OFREP_SNAPSHOT_POLL_SECONDS=0), so the fixture installs a store polling at the
production default (0.2 s). The browser writes through the live server, the poller notices
the committed version bump and rebuilds, exactly as in a deployed process: no test code
refreshes the snapshot by hand, so the measured kill-switch latency is the real one.
"""

from __future__ import annotations

import html
import json
import os
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from django.db import connections
from playwright.sync_api import Browser, BrowserContext, Dialog, Locator, Page, expect

from audit.services import SystemActor
from featureops_site.wsgi import application
from flags import services as flag_services
from flags.models import Environment, Targeting
from flags.snapshot_store import SnapshotStore, reset_store
from rollouts.models import Approval, ChangeRequest, FollowUp
from tests.browser.conftest import fail_on_csp_reports, watch_csp

pytestmark = pytest.mark.browser

PROJECT = "support-assistant"
TOOL_FLAG = "support_agent_tool_mode"
PROFILE_FLAG = "support_assistant_profile"
TIMEOUT_MS = 10_000
POLL_SECONDS = 0.2  # settings.OFREP_SNAPSHOT_POLL_SECONDS outside tests
KILLSWITCH_BUDGET_SECONDS = 1.0
# Set to a directory to keep screenshots of the proposal preview and of the approved request,
# for a human look at those pages (they are not needed for the assertions).
REVIEW_SCREENSHOTS = os.environ.get("REVIEW_SCREENSHOTS_DIR", "")

BETA_WRITE_RULE = {"id": "beta", "description": "Beta accounts",
                   "clauses": [{"op": "in_segment", "values": ["beta_accounts"]}], "serve": {"variation": "write"}}
ESCALATION_REASON = "write (risk 4) becomes reachable; the riskiest served today is approval_required (risk 3)"
ESCALATION_LINE = "tool mode for beta_accounts (new rule): read_only (risk 1) → write (risk 4)"
BETA_ACCOUNT = {"targetingKey": "acct-beta-101", "accountId": "acct-beta-101"}
OTHER_ACCOUNT = {"targetingKey": "acct-other-555", "accountId": "acct-other-555"}
INTERNAL_ACCOUNT = {"targetingKey": "acct-internal-001", "accountId": "acct-internal-001"}


# --- browser sessions, one context per person ---------------------------------------------


@pytest.fixture
def as_user(browser: Browser, live_server: Any, demo: dict[str, Any], request: pytest.FixtureRequest,
            csp_violations: list[dict[str, Any]]) -> Iterator[Callable[[str], Page]]:
    """Open a fresh browser context for a demo user and log in through the login form; lands
    on the project list. On failure each open page is saved to test-artifacts/<test>-<user>.png;
    a passing test whose pages met a CSP refusal fails at teardown."""
    opened: list[tuple[str, BrowserContext, Page]] = []

    def open_as(username: str) -> Page:
        context = browser.new_context(base_url=live_server.url, viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(TIMEOUT_MS)
        watch_csp(context, csp_violations)
        page = context.new_page()
        opened.append((username, context, page))
        page.goto("/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(demo["password"])
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Your projects", level=1)).to_be_visible()
        return page

    yield open_as
    failed = any(getattr(request.node, f"rep_{when}", None) is not None and getattr(request.node, f"rep_{when}").failed
                 for when in ("setup", "call"))
    for username, context, page in opened:
        if failed and not page.is_closed():
            artifacts = Path(request.config.rootpath) / "test-artifacts"
            artifacts.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{request.node.name}-{username}").strip("_")
            try:
                page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
            except Exception as exc:  # a failed screenshot must not hide the test failure
                request.node.add_report_section("teardown", "screenshot", f"{username}: no screenshot: {exc}")
        context.close()
    if not failed:
        fail_on_csp_reports(csp_violations)


# --- OFREP over HTTP, on the real WSGI application -----------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


class _PollingStore(SnapshotStore):
    """The production snapshot store, unchanged, except that its poller thread closes its
    database connection when stopped, so the test database can be flushed and dropped.

    On SQLite (the tests' shared-cache in-memory database) a tick that meets a write in
    progress logs "database table is locked"; the store keeps its snapshots and retries on
    the next tick, as it does after any database error in production."""

    def _poll(self) -> None:
        try:
            super()._poll()
        finally:
            connections.close_all()


Evaluate = Callable[[str, dict[str, Any]], dict[str, Any]]


@pytest.fixture
def ofrep(demo: dict[str, Any]) -> Iterator[Evaluate]:
    """evaluate(flag_key, context) -> the OFREP body, with a production SDK key, over HTTP."""
    environment = Environment.objects.get(project__key=PROJECT, key="production")
    _, raw_key = flag_services.sdk_key_create(environment=environment, name="browser walks",
                                              actor=SystemActor("tests"))
    store = _PollingStore(poll_seconds=POLL_SECONDS)
    reset_store(store)
    server: WSGIServer = make_server("127.0.0.1", 0, application, handler_class=_QuietHandler)

    def serve() -> None:
        try:
            server.serve_forever(poll_interval=0.05)
        finally:
            connections.close_all()  # the connection the first request opened to load the store

    thread = threading.Thread(target=serve, name="ofrep-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"

    def evaluate(flag_key: str, context: dict[str, Any]) -> dict[str, Any]:
        call = urllib.request.Request(  # noqa: S310 - http on loopback, built here
            f"{base}/ofrep/v1/evaluate/flags/{flag_key}", method="POST",
            data=json.dumps({"context": context}).encode(),
            headers={"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(call, timeout=5) as response:  # noqa: S310 - http on loopback, built here
            assert response.status == 200
            return json.load(response)

    try:
        yield evaluate
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        store.stop()
        for poller in [t for t in threading.enumerate() if t.name == "snapshot-poller"]:
            poller.join(timeout=10)
        reset_store(None)


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


# --- page helpers --------------------------------------------------------------------------


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
    rule to the rules JSON, check the live preview, give the reason and submit. Returns the
    change request, once its page is shown."""
    production_card(page).get_by_role("link", name="Propose a change").click()
    expect(page.get_by_role("heading", name=f"Propose a change to {TOOL_FLAG} in Production", level=1)).to_be_visible()
    verdict = page.get_by_test_id("preview-verdict")
    expect(verdict).to_have_text("No change yet: edit the targeting.")  # the preview loaded with the page

    # The user appends the rule to the list already in the textarea
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


# --- walk 1: an escalation with two approvers, applied, served over OFREP --------------------


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


# --- walk 2: no self-approval ----------------------------------------------------------------


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


# --- walk 3: the kill switch ------------------------------------------------------------------


def test_kill_switch__operator_flips_profile_in_production__off_without_approval_and_ofrep_fallback_within_1s(
    as_user: Callable[[str], Page], ofrep: Evaluate, record_property: Callable[[str, object], None],
) -> None:
    # Given OFREP serves the candidate profile to internal accounts in production
    before = ofrep(PROFILE_FLAG, INTERNAL_ACCOUNT)
    assert (before["variant"], before["reason"]) == ("citation_first_v4", "TARGETING_MATCH")

    # And the operator on the profile flag page, where Production is on
    operator = as_user("operator")
    open_flag(operator, PROFILE_FLAG)
    card = production_card(operator)
    expect(card.locator(".spread .badge").last).to_have_text("On")
    dialogs = accept_dialogs(operator)
    flips: list[str] = []
    operator.on("request", lambda r: flips.append(r.url) if r.method == "POST" and "/killswitch/" in r.url else None)
    set_page_marker(operator)

    # When they click "Kill switch…" on Production
    card.get_by_role("button", name="Kill switch…").click()

    # Then the form opens inside the card, asking for a reason
    form = operator.locator("#killswitch-production form")
    expect(form).to_contain_text("Everyone in Production will get the fallback baseline_v3 at once, with no approval.")
    submit = form.get_by_role("button", name="Send everyone to baseline_v3")

    # When they submit it without a reason, and confirm
    submit.click()

    # Then the server's error stands beside the field, in the card, and the flag is still on
    field = form.locator(".field").filter(has=operator.locator("[name='reason']"))
    expect(field).to_have_class(re.compile(r"\bhas-error\b"))
    expect(field.locator(".errorlist")).to_contain_text("This field is required.")
    expect(card.locator(".spread .badge").last).to_have_text("On")
    assert Targeting.objects.get(flag__key=PROFILE_FLAG, environment__key="production").enabled is True
    assert dialogs == ["Send everyone in Production to baseline_v3 now?"]
    assert len(flips) == 1

    # When they give a reason and confirm
    form.get_by_label("Reason").fill("Citations point at stale help-centre articles")
    clicked = time.monotonic()
    with operator.expect_response(lambda r: r.request.method == "POST" and "/killswitch/production/" in r.url) as info:
        form.get_by_role("button", name="Send everyone to baseline_v3").click()
    answered = time.monotonic()
    assert info.value.status == 200

    # Then OFREP serves the fallback to an internal account within one second of the click
    body, elapsed = wait_for_ofrep(
        ofrep, PROFILE_FLAG, INTERNAL_ACCOUNT,
        lambda b: (b.get("variant"), b.get("reason")) == ("baseline_v3", "DISABLED"),
        since=clicked, within=KILLSWITCH_BUDGET_SECONDS)
    record_property("killswitch_click_to_ofrep_seconds", round(elapsed, 3))
    record_property("killswitch_response_to_ofrep_seconds", round(elapsed - (answered - clicked), 3))
    assert (body["variant"], body["reason"], body["value"]["profile"]) == ("baseline_v3", "DISABLED", "baseline_v3"), (
        f"OFREP still served {body['variant']} ({body['reason']}) {elapsed:.3f} s after the click")
    assert elapsed <= KILLSWITCH_BUDGET_SECONDS, f"fallback served {elapsed:.3f} s after the click"

    # And the Production card shows Off, with a success message, swapped in without a page load
    card = production_card(operator)
    expect(card.locator(".spread .badge").last).to_have_text("Off")
    expect(card.get_by_role("button", name="Kill switch…")).to_have_count(0)
    expect(operator.locator("#messages")).to_contain_text(
        f"Kill switch flipped: {PROFILE_FLAG} serves its fallback baseline_v3 to everyone in Production.")
    assert_no_full_page_load(operator)
    assert dialogs == ["Send everyone in Production to baseline_v3 now?"] * 2

    # And no approval was involved; the targeting is off, by the operator
    assert not ChangeRequest.objects.exists()
    targeting = Targeting.objects.get(flag__key=PROFILE_FLAG, environment__key="production")
    assert targeting.enabled is False and targeting.updated_by.get_username() == "operator"

    # And the change-control panel refreshed itself with a follow-up to acknowledge
    follow_up_box = operator.locator("#change-control").get_by_test_id("follow-up")
    expect(follow_up_box).to_have_count(1)
    expect(follow_up_box).to_contain_text("Citations point at stale help-centre articles")

    # When pm, an approver, opens the flag and acknowledges the follow-up with a note
    pm = as_user("pm")
    open_flag(pm, PROFILE_FLAG)
    follow_up_box = pm.locator("#change-control").get_by_test_id("follow-up")
    expect(follow_up_box).to_contain_text("Citations point at stale help-centre articles")
    set_page_marker(pm)
    follow_up_box.get_by_label("What was found, what happens next").fill(
        "Docs index rebuilt; turn it back on through a change request.")
    follow_up_box.get_by_role("button", name="Acknowledge").click()

    # Then it is acknowledged in place (htmx), and recorded as pm's
    expect(follow_up_box).to_contain_text(
        "Acknowledged by pm: Docs index rebuilt; turn it back on through a change request.")
    expect(follow_up_box.get_by_role("button", name="Acknowledge")).to_have_count(0)
    expect(pm.locator("#messages")).to_contain_text("Acknowledged.")
    assert_no_full_page_load(pm)
    follow_up = FollowUp.objects.get()
    assert follow_up.acknowledged_at is not None and follow_up.acknowledged_by.get_username() == "pm"
