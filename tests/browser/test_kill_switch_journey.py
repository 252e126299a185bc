"""The kill switch in a real browser: an operator sends the profile flag in production to its
fallback, with a reason (first refused beside the field without one, before any dialog) and no approval; OFREP serves the
fallback within a second of the click, measured on the real WSGI application with a polling
snapshot store (the `ofrep` fixture); and the follow-up it leaves is acknowledged by an approver."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from flags.models import Targeting
from rollouts.models import ChangeRequest, FollowUp
from tests.browser.support import (
    INTERNAL_ACCOUNT,
    PROFILE_FLAG,
    Evaluate,
    accept_dialogs,
    assert_no_full_page_load,
    open_flag,
    production_card,
    set_page_marker,
    wait_for_ofrep,
)

pytestmark = pytest.mark.browser
KILLSWITCH_BUDGET_SECONDS = 1.0


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

    # When they submit it without a reason
    submit.click()

    # Then the error stands beside the field before any question, nothing is posted, the flag is still on
    field = form.locator(".field").filter(has=operator.locator("[name='reason']"))
    expect(field).to_have_class(re.compile(r"\bhas-error\b"))
    expect(field.locator(".errorlist")).to_contain_text("Say why: a reason is required")
    expect(card.locator(".spread .badge").last).to_have_text("On")
    assert Targeting.objects.get(flag__key=PROFILE_FLAG, environment__key="production").enabled is True
    assert dialogs == []
    assert len(flips) == 0

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
    expect(card.locator(".spread .badge").last).to_have_text("Killed")
    expect(card.get_by_test_id("stop-fact")).to_contain_text("Off: serves baseline_v3 (")
    expect(card.get_by_test_id("stop-fact")).to_contain_text(
        "kill switch by Omar Oncall (operator) on")
    expect(card.get_by_role("button", name="Kill switch…")).to_have_count(0)
    expect(operator.locator("#messages")).to_contain_text(
        f"Kill switch flipped: {PROFILE_FLAG} serves its fallback baseline_v3 to everyone in Production.")
    assert_no_full_page_load(operator)
    assert dialogs == ["Send everyone in Production to baseline_v3 now?"]

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

