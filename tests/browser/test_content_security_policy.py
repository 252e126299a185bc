"""The Content-Security-Policy in Chromium (issue 14, item 2): an SDK key named like a script
is shown in its revoke confirmation as text and never runs; the console's htmx journeys work
under the policy with nothing refused; the policy really refuses inline script; and the
Django admin still works under it.

Every test here also fails at teardown if the CSP refused anything in its pages (conftest's
watch_csp), so "nothing refused" is checked on every step, not only where a test says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from playwright.sync_api import Dialog, Page, expect

from audit.models import AuditEvent
from flags.models import SdkKey, Targeting
from rollouts.change_control import submitting
from rollouts.models import Approval, ChangeRequest
from tests.browser.support import assert_no_full_page_load, set_page_marker

pytestmark = pytest.mark.browser

PROJECT = "support-assistant"
PROFILE_FLAG = "support_assistant_profile"
TOOL_FLAG = "support_agent_tool_mode"
BETA_WRITE_RULE = {"id": "beta", "description": "Beta accounts",
                   "clauses": [{"op": "in_segment", "values": ["beta_accounts"]}], "serve": {"variation": "write"}}


# --- helpers -------------------------------------------------------------------------------


def answer_dialogs(page: Page, answers: list[bool]) -> list[tuple[str, str]]:
    """Answer each dialog with the next of `answers` (accept/dismiss; accept once they run
    out); returns the (type, message) of every dialog, alerts included."""
    seen: list[tuple[str, str]] = []
    pending = list(answers)

    def answer(dialog: Dialog) -> None:
        seen.append((dialog.type, dialog.message))
        accept = pending.pop(0) if pending else True
        if accept:
            dialog.accept()
        else:
            dialog.dismiss()

    page.on("dialog", answer)
    return seen


def wait_for_reports(page: Page, reports: list[dict[str, Any]], count: int) -> None:
    """Wait until the page and Python both hold at least `count` CSP reports."""
    page.wait_for_function(f"() => window.__cspReports.length >= {count}")
    for _ in range(50):
        if len(reports) >= count:
            return
        page.wait_for_timeout(20)
    raise AssertionError(f"expected {count} CSP reports, got {reports}")


def log_out(page: Page) -> None:
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Username")).to_be_visible()


# --- the injection through an SDK key's name ------------------------------------------------


@pytest.mark.parametrize("name", [
    pytest.param("x');alert(document.domain);('", id="quote-ends-the-js-string"),
    pytest.param("x'+alert(document.domain)+'", id="quote-runs-code-inside-the-confirm-call"),
    pytest.param('k"><img src=x onerror=alert(1)></script><script>alert(2)</script>', id="markup"),
    pytest.param("x\\');alert(3);//", id="backslash-quote"),
])
def test_sdk_key_revoke__name_written_like_script__confirm_shows_name_verbatim_and_nothing_runs(
    login: Callable[[str], Page], name: str,
) -> None:
    # Given the project admin created a key with that name through the SDK keys page
    page = login("admin")
    page.goto(f"/p/{PROJECT}/sdk-keys/")
    page.get_by_label("Environment").select_option(label="Production")
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_test_id("new-sdk-key")).to_be_visible()
    sdk_key = SdkKey.objects.get(name=name)
    row = page.get_by_test_id("sdk-key").filter(has=page.get_by_role("cell", name=name, exact=True))
    expect(row).to_have_count(1)
    expect(row.locator(".badge")).to_have_text("active")
    revokes: list[str] = []
    page.on("request", lambda r: revokes.append(r.url) if r.method == "POST" and "/revoke/" in r.url else None)
    dialogs = answer_dialogs(page, [False, True])
    confirm_text = f"Revoke {name}? Applications using it are refused within a second."

    # When they click Revoke and cancel the confirmation
    row.get_by_role("button", name="Revoke").click()

    # Then the one dialog was the confirmation, carrying the name verbatim; nothing was sent
    page.wait_for_timeout(200)  # room for an injected alert() or a submission to show up
    assert dialogs == [("confirm", confirm_text)]
    assert revokes == []
    expect(row.locator(".badge")).to_have_text("active")
    sdk_key.refresh_from_db()
    assert sdk_key.revoked_at is None

    # When they click Revoke again and accept
    row.get_by_role("button", name="Revoke").click()

    # Then the key is revoked, still with no dialog but the two confirmations
    expect(page.locator("#messages")).to_contain_text(f"Revoked “{name}” ({sdk_key.prefix}…).")
    expect(row.locator(".badge")).to_have_text(re.compile(r"^revoked "))
    assert dialogs == [("confirm", confirm_text)] * 2
    assert len(revokes) == 1
    sdk_key.refresh_from_db()
    assert sdk_key.revoked_at is not None
    assert AuditEvent.objects.filter(action="sdk_key.revoked", target_id=str(sdk_key.pk)).count() == 1


# --- the console's journeys under the policy ------------------------------------------------


def test_console_under_csp__inline_script_probe_then_htmx_journeys__probe_refused_and_journeys_work(
    login: Callable[[str], Page], csp_violations: list[dict[str, Any]],
) -> None:
    # Given the flag owner on the flag list
    page = login("owner")
    page.goto(f"/p/{PROJECT}/")
    rows = page.locator("#flag-table tbody tr")
    expect(rows).to_have_count(3)

    # When something puts an inline <script> and an onclick handler into the page
    page.evaluate("""() => {
        const script = document.createElement("script");
        script.textContent = "window.__inlineScriptRan = true";
        document.body.append(script);
        const probe = document.createElement("button");
        probe.id = "csp-probe";
        probe.textContent = "probe";
        probe.setAttribute("onclick", "window.__inlineHandlerRan = true");
        document.body.append(probe);
    }""")
    page.locator("#csp-probe").click()

    # Then neither runs: the browser refuses both under script-src
    wait_for_reports(page, csp_violations, 2)
    assert page.evaluate("[window.__inlineScriptRan === undefined, window.__inlineHandlerRan === undefined]") == [
        True, True]
    assert sorted(report["directive"] for report in csp_violations) == ["script-src-attr", "script-src-elem"]
    csp_violations.clear()  # the probe's refusals were expected; from here on nothing may be refused
    page.reload()

    # When the owner filters the flag list by behavior surface (htmx swap, URL pushed)
    set_page_marker(page)
    page.get_by_label("Behavior surface").select_option(label="Agent tools")

    # Then the table shows the one agent-tools flag without a page load
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(TOOL_FLAG)
    expect(page).to_have_url(re.compile(r"[?&]surface=agent_tools(&|$)"))
    assert_no_full_page_load(page)

    # When they edit a variation inline and save
    page.goto(f"/p/{PROJECT}/flags/{PROFILE_FLAG}/")
    set_page_marker(page)
    page.locator("div#variation-citation_first_v4").get_by_role("button", name="Edit").click()
    form = page.locator("form#variation-citation_first_v4")
    form.locator("[name='name']").fill("Citation first v4 (CSP)")
    form.get_by_role("button", name="Save variation").click()

    # Then the row is swapped back in, saved, without a page load
    row = page.locator("div#variation-citation_first_v4")
    expect(row.locator(".badge.on")).to_have_text("Saved")
    expect(row).to_contain_text("Citation first v4 (CSP)")
    assert_no_full_page_load(page)

    # When they open a page they may not use, and follow its "Go back" link (console.js)
    page.goto(f"/p/{PROJECT}/sdk-keys/")
    expect(page.get_by_role("heading", name="Not allowed", level=1)).to_be_visible()
    page.get_by_role("link", name="Go back").click()

    # Then they are back on the flag page
    expect(page.get_by_role("heading", name=PROFILE_FLAG, level=1)).to_be_visible()
    log_out(page)

    # Given a pending change request on the tool-mode flag in production, which pm may approve
    owner = get_user_model().objects.get(username="owner")
    production = Targeting.objects.get(flag__key=TOOL_FLAG, environment__key="production")
    change_request = submitting.targeting_change_submit(
        targeting=production, changes={"rules": [*production.rules, BETA_WRITE_RULE]},
        reason="Beta accounts asked to let the agent file tickets itself.", actor=owner)
    assert isinstance(change_request, ChangeRequest) and change_request.status == "pending"

    # When pm opens it and approves (htmx)
    page = login("pm")
    page.goto(f"/p/{PROJECT}/changes/{change_request.pk}/")
    set_page_marker(page)
    page.get_by_role("button", name="Approve").click()

    # Then the approval is counted in place
    expect(page.get_by_test_id("cr-approvals")).to_have_text(f"1 of {change_request.required_approvals}")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    assert_no_full_page_load(page)
    assert Approval.objects.filter(change_request=change_request, approver__username="pm").count() == 1
    log_out(page)

    # When the operator opens the kill switch on production, cancels it (console.js), opens it
    # again and flips it with a reason, confirming (hx-confirm)
    page = login("operator")
    dialogs = answer_dialogs(page, [True])
    page.goto(f"/p/{PROJECT}/flags/{PROFILE_FLAG}/")
    card = page.get_by_test_id("targeting-production")
    set_page_marker(page)
    card.get_by_role("button", name="Kill switch…").click()
    killswitch_form = page.locator("#killswitch-production form")
    expect(killswitch_form).to_have_count(1)
    killswitch_form.get_by_role("button", name="Cancel").click()
    expect(killswitch_form).to_have_count(0)
    card.get_by_role("button", name="Kill switch…").click()
    killswitch_form.get_by_label("Reason").fill("Citations point at stale articles")
    killswitch_form.get_by_role("button", name="Send everyone to baseline_v3").click()

    # Then the card shows the flag stopped by the kill switch, swapped in without a page load, after one confirmation
    expect(card.locator(".spread .badge").last).to_have_text("Killed")
    assert_no_full_page_load(page)
    assert dialogs == [("confirm", "Send everyone in Production to baseline_v3 now?")]
    assert Targeting.objects.get(flag__key=PROFILE_FLAG, environment__key="production").enabled is False
    # (and the CSP refused nothing on the way: checked at teardown, see watch_csp)


# --- the Django admin under the policy ------------------------------------------------------


def test_django_admin_under_csp__login_and_group_add_with_permission_widget__saved_and_nothing_refused(
    page: Page, demo: dict[str, Any],
) -> None:
    # Given the admin login page, served with the policy
    response = page.goto("/admin/login/")
    assert response is not None
    policy = dict(directive.strip().split(" ", 1) for directive in response.headers["content-security-policy"].split(";"))
    assert policy["script-src"] == "'self'"

    # When the site administrator logs in
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(demo["password"])
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()

    # And adds a group, choosing one permission in the admin's scripted two-box widget
    page.goto("/admin/auth/group/add/")
    page.get_by_label("Name:").fill("Release managers")
    page.locator("#id_permissions_input").press_sequentially("Can view sdk key")
    available = page.locator("#id_permissions_from option")
    expect(available).to_have_count(1)
    available.first.dblclick()
    expect(page.locator("#id_permissions_to option")).to_have_count(1)
    page.get_by_role("button", name="Save", exact=True).click()

    # Then the group is saved with that permission (the widget's script selected it on submit)
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    group = Group.objects.get(name="Release managers")
    assert list(group.permissions.all()) == [Permission.objects.get(codename="view_sdkkey")]
