"""The flag owner's journey through the console in a real browser: log in, find a flag by
filtering (htmx, no page load), read its variations and targeting, edit a variation inline,
turn a flag on in a non-governed environment; and what an auditor can neither see nor do."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from audit.models import AuditEvent
from flags.models import Targeting, Variation
from tests.browser.support import assert_no_full_page_load, open_flag, set_page_marker

pytestmark = pytest.mark.browser

PROJECT = "support-assistant"
PROFILE_FLAG = "support_assistant_profile"
TOOL_FLAG = "support_agent_tool_mode"
INCIDENT_FLAG = "support_ai_incident_fallback"
PROFILE_VARIATIONS = ("baseline_v3", "citation_first_v4", "fallback_human_review")


# --- helpers -------------------------------------------------------------------------------


def flag_rows(page: Page) -> Locator:
    return page.locator("#flag-table tbody tr")


def variation_row(page: Page, variation_key: str) -> Locator:
    return page.locator(f"div#variation-{variation_key}")


def open_inline_edit(page: Page, variation_key: str) -> Locator:
    """Click the row's Edit button and return the inline form that replaces the row."""
    variation_row(page, variation_key).get_by_role("button", name="Edit").click()
    form = page.locator(f"form#variation-{variation_key}")
    expect(form.get_by_role("heading", name=f"Edit {variation_key}")).to_be_visible()
    return form


def field_of(form: Locator, name: str) -> Locator:
    """The `.field` wrapper (label, input, help and errors) of the form's input called `name`."""
    return form.locator(".field").filter(has=form.page.locator(f"[name='{name}']"))


def variation(flag_key: str, variation_key: str) -> Variation:
    return Variation.objects.get(flag__project__key=PROJECT, flag__key=flag_key, key=variation_key)


def variation_audit_events(variation_obj: Variation) -> Any:
    return AuditEvent.objects.filter(action="variation.updated", flag_id=variation_obj.flag_id,
                                     target_id=str(variation_obj.pk))


# --- journey 1: find, read, edit -----------------------------------------------------------


def test_flag_owner_walk__filters_reads_and_edits_variation_inline__saved_without_page_load(
    login: Callable[[str], Page],
) -> None:
    # Given the flag owner logged in through the login form
    page = login("owner")

    # When they open the "Support assistant" project from the project list
    page.get_by_role("link").filter(has=page.get_by_role("heading", name="Support assistant")).click()
    expect(page).to_have_url(re.compile(rf"/p/{PROJECT}/$"))
    expect(page.get_by_role("heading", name="Support assistant", level=1)).to_be_visible()
    expect(flag_rows(page)).to_have_count(3)

    # And filter by behavior surface "Agent tools"
    set_page_marker(page)
    page.get_by_label("Behavior surface").select_option(label="Agent tools")

    # Then the table shows only the agent-tools flag, swapped in by htmx with the URL pushed
    expect(flag_rows(page)).to_have_count(1)
    expect(flag_rows(page).first).to_contain_text(TOOL_FLAG)
    expect(page).to_have_url(re.compile(r"[?&]surface=agent_tools(&|$)"))
    assert_no_full_page_load(page)

    # When they also type in the search box
    page.get_by_label("Search key or name").press_sequentially("incident")

    # Then nothing matches both filters, still without a page load, and both are in the URL
    expect(page.locator("#flag-table")).to_contain_text("No flag matches these filters.")
    expect(flag_rows(page)).to_have_count(0)
    expect(page).to_have_url(re.compile(r"[?&]q=incident(&|$)"))
    expect(page).to_have_url(re.compile(r"[?&]surface=agent_tools(&|$)"))
    assert_no_full_page_load(page)

    # When they clear the filters and open the profile flag
    page.get_by_role("link", name="Clear filters").click()
    expect(page).to_have_url(re.compile(rf"/p/{PROJECT}/$"))
    expect(flag_rows(page)).to_have_count(3)
    page.get_by_role("link", name=PROFILE_FLAG, exact=True).click()
    expect(page.get_by_role("heading", name=PROFILE_FLAG, level=1)).to_be_visible()

    # Then its three variations are listed with their JSON values pretty-printed
    expect(page.get_by_test_id("variation")).to_have_count(3)
    for key in PROFILE_VARIATIONS:
        row = variation_row(page, key)
        expect(row).to_be_visible()
        value = row.locator("pre")
        expect(value).to_contain_text(f'"profile": "{key}"')
        pretty = json.dumps(variation(PROFILE_FLAG, key).value, indent=2)
        assert value.inner_text().strip() == pretty

    # And production is governed: a notice, a proposal instead of the toggle and the editor
    production = page.get_by_test_id("targeting-production")
    expect(production).to_contain_text("governed")
    expect(production.locator(".notice")).to_contain_text("changes that raise risk wait for approval")
    expect(production.get_by_role("link", name="Propose a change")).to_be_visible()
    expect(production.get_by_role("button", name=re.compile(r"Turn (on|off)"))).to_have_count(0)
    expect(production.get_by_role("link", name="Edit targeting")).to_have_count(0)
    # (staging, not governed, does offer them: the absence above is not an empty page)
    staging = page.get_by_test_id("targeting-staging")
    expect(staging.get_by_role("button", name=re.compile(r"Turn (on|off)"))).to_be_visible()
    expect(staging.get_by_role("link", name="Edit targeting")).to_be_visible()

    # When they edit citation_first_v4 inline: new name and risk rank, then save
    before = variation(PROFILE_FLAG, "citation_first_v4")
    set_page_marker(page)
    form = open_inline_edit(page, "citation_first_v4")
    expect(form.locator("[name='name']")).to_have_value("Citation first v4")
    form.locator("[name='name']").fill("Citation first v4.1")
    form.locator("[name='risk_rank']").fill("2")
    form.get_by_role("button", name="Save variation").click()

    # Then the row shows the new values, marked saved, with a success message and no page load
    row = variation_row(page, "citation_first_v4")
    expect(row.locator(".badge.on")).to_have_text("Saved")
    expect(row).to_contain_text("Citation first v4.1")
    expect(row.get_by_title("Risk rank: 0 is the safest")).to_have_text("risk 2")
    expect(page.locator("#messages")).to_contain_text("Variation “citation_first_v4” saved.")
    expect(page.locator("form#variation-citation_first_v4")).to_have_count(0)
    assert_no_full_page_load(page)

    # And the database holds the change, with the value untouched, and an audit event
    after = variation(PROFILE_FLAG, "citation_first_v4")
    assert (after.name, after.risk_rank) == ("Citation first v4.1", 2)
    assert after.value == before.value
    assert after.description == before.description
    event = variation_audit_events(after).get()
    assert event.actor_label and event.actor is not None and event.actor.get_username() == "owner"
    assert event.before == {"name": "Citation first v4", "risk_rank": 1}
    assert event.after == {"name": "Citation first v4.1", "risk_rank": 2}


def test_flag_list_filter__back_button_after_leaving_the_list__restores_the_full_page(
    login: Callable[[str], Page],
) -> None:
    # Given the owner filtered the flag list (htmx pushed ?surface=agent_tools into history)
    page = login("owner")
    page.goto(f"/p/{PROJECT}/")
    page.get_by_label("Behavior surface").select_option(label="Agent tools")
    expect(page).to_have_url(re.compile(r"[?&]surface=agent_tools(&|$)"))
    expect(flag_rows(page)).to_have_count(1)

    # When they open a flag and press Back
    page.get_by_role("link", name=TOOL_FLAG, exact=True).click()
    expect(page.get_by_role("heading", name=TOOL_FLAG, level=1)).to_be_visible()
    page.go_back()

    # Then the whole filtered list page is back: layout, heading, filters and table
    expect(page).to_have_url(re.compile(r"[?&]surface=agent_tools(&|$)"))
    expect(page.get_by_role("heading", name="Support assistant", level=1)).to_be_visible(timeout=5_000)
    expect(flag_rows(page)).to_have_count(1)
    expect(page.get_by_label("Behavior surface")).to_have_value("agent_tools")


# --- journey 2: invalid inline edit --------------------------------------------------------


@pytest.mark.parametrize(
    ("make_text", "error"),
    [
        pytest.param(lambda value: json.dumps({**value, "temperature": 9}, indent=2),
                     "temperature: 9 is greater than the maximum of 2", id="schema-violation"),
        pytest.param(lambda value: json.dumps(value, indent=2)[:-2], "Not valid JSON", id="malformed-json"),
    ],
)
def test_inline_variation_edit__invalid_json_value__error_beside_field_and_nothing_saved(
    login: Callable[[str], Page], make_text: Callable[[dict], str], error: str,
) -> None:
    # Given the flag owner on the profile flag, editing baseline_v3 inline
    page = login("owner")
    open_flag(page, PROFILE_FLAG)
    before = variation(PROFILE_FLAG, "baseline_v3")
    set_page_marker(page)
    form = open_inline_edit(page, "baseline_v3")

    # When they save a value that is malformed or breaks the flag's JSON Schema
    form.locator("[name='value']").fill(make_text(before.value))
    form.get_by_role("button", name="Save variation").click()

    # Then the form stays open with the error beside the value field, without a page load
    value_field = field_of(form, "value")
    expect(value_field).to_have_class(re.compile(r"\bhas-error\b"))
    expect(value_field.locator(".errorlist")).to_contain_text(error)
    expect(form.get_by_role("button", name="Save variation")).to_be_visible()
    expect(page.locator("#messages")).not_to_contain_text("saved")
    assert_no_full_page_load(page)

    # And nothing was saved or audited
    after = variation(PROFILE_FLAG, "baseline_v3")
    assert after.value == before.value
    assert after.value["temperature"] == 0.2
    assert not variation_audit_events(after).exists()


# --- journey 3: turn a flag on in staging --------------------------------------------------


def test_targeting_toggle__owner_turns_flag_on_in_staging__card_shows_on_without_page_load(
    login: Callable[[str], Page],
) -> None:
    # Given the flag owner on the incident-fallback flag, off in Staging
    page = login("owner")
    open_flag(page, INCIDENT_FLAG)
    staging = page.get_by_test_id("targeting-staging")
    expect(staging.locator(".spread .badge").last).to_have_text("Off")
    version_before = Targeting.objects.get(flag__key=INCIDENT_FLAG, environment__key="staging").version
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    set_page_marker(page)

    # When they click "Turn on" and confirm
    staging.get_by_role("button", name="Turn on").click()

    # Then the card shows On and offers "Turn off", with a success message, without a page load
    expect(staging.locator(".badge.on")).to_have_text("On")
    expect(staging.get_by_role("button", name="Turn off")).to_be_visible()
    expect(page.locator("#messages")).to_contain_text(f"“{INCIDENT_FLAG}” is now on in Staging.")
    assert_no_full_page_load(page)
    assert dialogs == [f"Turn {INCIDENT_FLAG} on in Staging?"]

    # And the staging targeting is enabled in the database; production is untouched
    targeting = Targeting.objects.get(flag__key=INCIDENT_FLAG, environment__key="staging")
    assert targeting.enabled is True
    assert targeting.version == version_before + 1
    assert targeting.updated_by is not None and targeting.updated_by.get_username() == "owner"
    assert Targeting.objects.get(flag__key=INCIDENT_FLAG, environment__key="production").enabled is False


# --- journey 4: the auditor reads only -----------------------------------------------------


def test_auditor__views_flag_and_forges_variation_edit__no_edit_controls_and_post_refused_403(
    login: Callable[[str], Page], live_server: Any,
) -> None:
    # Given the auditor logged in
    page = login("auditor")

    # When they open the flag list and the profile flag
    page.goto(f"/p/{PROJECT}/")
    expect(flag_rows(page)).to_have_count(3)

    # Then there is no "New flag" button
    expect(page.get_by_role("link", name="New flag")).to_have_count(0)

    # And the flag page offers no editing control at all
    open_flag(page, PROFILE_FLAG)
    expect(page.get_by_test_id("variation")).to_have_count(3)
    expect(page.get_by_role("button", name="Edit")).to_have_count(0)
    expect(page.get_by_role("link", name="Edit contract")).to_have_count(0)
    expect(page.get_by_role("link", name="Edit targeting")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile(r"Turn (on|off)"))).to_have_count(0)
    expect(page.get_by_text("Add a variation")).to_have_count(0)

    # When they forge the inline edit POST from their own session, with a valid CSRF token
    before = variation(PROFILE_FLAG, "citation_first_v4")
    token = next(c["value"] for c in page.context.cookies(live_server.url) if c["name"] == "csrftoken")
    forged_value = json.dumps({**before.value, "temperature": 1.5})
    response = page.request.post(
        f"/p/{PROJECT}/flags/{PROFILE_FLAG}/variations/citation_first_v4/edit/",
        form={"name": "Hijacked", "value": forged_value, "description": "", "risk_rank": "0"},
        headers={"X-CSRFToken": token, "Referer": page.url},
    )

    # Then it is refused by the permission check (not by CSRF) with 403
    assert response.status == 403
    assert "You may not edit this flag's variations." in html.unescape(response.text())

    # And nothing changed or was audited
    after = variation(PROFILE_FLAG, "citation_first_v4")
    assert (after.name, after.value, after.description, after.risk_rank) == (
        before.name, before.value, before.description, before.risk_rank)
    assert not variation_audit_events(after).exists()
