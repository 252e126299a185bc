"""The rule editor in a real browser, with the keyboard alone (Tab, Enter, Space, typing): a rule
built and saved in a non-governed environment and shown on the flag page; a split rule built on
a governed environment's proposal page, its total and the approvals verdict kept live, submitted
as a change request; and the operator's "Roll back…", a rule removed with the builder, applied
at once."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from flags.models import Segment, Targeting
from rollouts.models import ChangeRequest
from tests.browser.support import (
    PROFILE_FLAG,
    PROJECT,
    TOOL_FLAG,
    assert_no_full_page_load,
    review_screenshot,
    set_page_marker,
)

pytestmark = pytest.mark.browser
MAX_TABS = 200


def targeting(flag_key: str, environment_key: str) -> Targeting:
    return Targeting.objects.get(flag__project__key=PROJECT, flag__key=flag_key, environment__key=environment_key)


def focused(page: Page, condition: str) -> bool:
    """Whether the focused element `el` meets a JavaScript condition, e.g. "el.id === 'x'"."""
    return bool(page.evaluate(f"(() => {{ const el = document.activeElement; return !!el && ({condition}); }})()"))


def tab_to(page: Page, condition: str) -> None:
    """Press Tab until the focused element meets `condition` (as a keyboard user moves through the page).
    First wait until the editor's last swap has settled and placed the focus (rule_editor.js moves it
    on htmx:afterSettle): a person sees where the focus went before pressing on; keys pressed before
    that could land on the element the focus is about to leave."""
    expect(page.locator("[data-rule-editor][data-focus], .htmx-request, .htmx-settling")).to_have_count(0)
    for _ in range(MAX_TABS):
        if focused(page, condition):
            return
        page.keyboard.press("Tab")
    pytest.fail(f"Tab never reached an element where {condition}")


def by_id(element_id: str) -> str:
    return f"el.id === {element_id!r}"


def expect_focus_on(page: Page, element_id: str) -> None:
    expect(page.locator(f"[id='{element_id}']")).to_be_focused()


def test_keyboard__builds_a_rule_in_development_and_saves_it__flag_page_shows_it(
        login: Callable[[str], Page]) -> None:
    # Given the flag owner on the targeting page of the tool mode flag in development (no rules yet)
    page = login("owner")
    assert targeting(TOOL_FLAG, "development").rules == []
    page.goto(f"/p/{PROJECT}/flags/{TOOL_FLAG}/targeting/development/")
    expect(page.get_by_role("button", name="Builder")).to_have_attribute("aria-pressed", "true")

    # When they add a rule: the focus lands in its description
    tab_to(page, by_id("rule-editor-add-rule"))
    page.keyboard.press("Enter")
    expect_focus_on(page, "id_rule-0-description")
    page.keyboard.type("Plan in beta")
    # the clause: plan, "is one of" (the operator it starts with), beta
    tab_to(page, by_id("id_rule-0-clause-0-attribute"))
    page.keyboard.type("plan")
    page.keyboard.press("Tab")
    expect_focus_on(page, "id_rule-0-clause-0-op")
    page.keyboard.press("Tab")
    expect_focus_on(page, "id_rule-0-clause-0-values")
    page.keyboard.type("beta")
    # and saves before choosing what the rule serves: refused, the error beside that field, nothing lost
    tab_to(page, "el.type === 'submit' && el.textContent.trim() === 'Save targeting'")
    page.keyboard.press("Enter")
    serve_field = page.locator(".field.has-error").filter(has=page.locator("[id='id_rule-0-serve']"))
    expect(serve_field.locator(".errorlist")).to_have_text("Choose what this rule serves.")
    expect(page.locator("[id='id_rule-0-clause-0-values']")).to_have_value("beta")
    expect(page.locator("[id='id_rule-0-description']")).to_have_value("Plan in beta")
    review_screenshot(page, "editor_development_error.png")
    assert targeting(TOOL_FLAG, "development").rules == []
    # and then picks what it serves by typing its name in the list
    tab_to(page, by_id("id_rule-0-serve"))
    page.keyboard.type("write")
    expect(page.locator("[id='id_rule-0-serve']")).to_have_value("write")
    expect(page.locator("#rule-0-split")).to_be_hidden()
    review_screenshot(page, "editor_development_rule.png")
    # and saves with Enter on "Save targeting"
    tab_to(page, "el.type === 'submit' && el.textContent.trim() === 'Save targeting'")
    page.keyboard.press("Enter")

    # Then the flag page shows the rule in development
    expect(page).to_have_url(re.compile(rf"/p/{PROJECT}/flags/{TOOL_FLAG}/#env-development$"))
    card = page.get_by_test_id("targeting-development")
    expect(card.locator("ol.rules li")).to_have_count(1)
    expect(card.locator("ol.rules li")).to_contain_text("Plan in beta")
    expect(card.locator("ol.rules li")).to_contain_text("plan is one of beta")
    expect(card.locator("ol.rules li strong")).to_have_text("write")
    assert targeting(TOOL_FLAG, "development").rules == [
        {"id": "rule-1", "description": "Plan in beta", "clauses": [{"attribute": "plan", "op": "in", "values": ["beta"]}],
         "serve": {"variation": "write"}}]


def test_keyboard__proposal_builds_a_split_rule__live_total_and_verdict__change_request_submitted(
        login: Callable[[str], Page]) -> None:
    # Given the flag owner on the proposal page of production, which is governed
    page = login("owner")
    stored = targeting(TOOL_FLAG, "production").rules
    page.goto(f"/p/{PROJECT}/flags/{TOOL_FLAG}/propose/production/")
    verdict = page.get_by_test_id("preview-verdict")
    expect(verdict).to_have_text("No change yet: edit the targeting.")
    set_page_marker(page)

    # When they add a rule for plan "beta"
    tab_to(page, by_id("rule-editor-add-rule"))
    page.keyboard.press("Enter")
    expect_focus_on(page, "id_rule-1-description")
    page.keyboard.type("Beta: a tenth on write tools")
    tab_to(page, by_id("id_rule-1-clause-0-attribute"))
    page.keyboard.type("plan")
    tab_to(page, by_id("id_rule-1-clause-0-values"))
    page.keyboard.type("beta")
    # serving a split, whose total is shown while they type
    tab_to(page, by_id("id_rule-1-serve"))
    page.keyboard.type("a percentage")
    split = page.locator("#rule-1-split")
    expect(split).to_be_visible()
    total = split.locator("[data-split-total]")
    tab_to(page, by_id("id_rule-1-split-read_only"))
    page.keyboard.type("90")
    expect(total).to_have_text("adds up to 90 % — 10 % short")
    tab_to(page, by_id("id_rule-1-split-write"))
    page.keyboard.type("5")
    expect(total).to_have_text("adds up to 95 % — 5 % short")
    page.keyboard.press("Backspace")
    page.keyboard.type("10")
    expect(total).to_have_text("adds up to 100 %")
    page.keyboard.press("Tab")  # leaving the field asks for the preview

    # Then the verdict beside the form says what the built rule needs, without a page load
    expect(verdict).to_contain_text("This change needs 2 approvals")
    expect(page.get_by_test_id("preview-reasons")).to_contain_text("write (risk 4) becomes reachable")
    assert_no_full_page_load(page)
    review_screenshot(page, "editor_proposal_split.png")

    # When they give the reason and submit with Enter
    tab_to(page, by_id("id_reason"))
    page.keyboard.type("Beta accounts try ticket writes on a tenth of their traffic.")
    tab_to(page, "el.type === 'submit' && el.textContent.trim() === 'Submit'")
    page.keyboard.press("Enter")

    # Then a change request holds the rules as built; production waits for the approvals
    expect(page).to_have_url(re.compile(rf"/p/{PROJECT}/changes/\d+/$"))
    change_request = ChangeRequest.objects.get()
    assert change_request.required_approvals == 2
    assert change_request.proposed["rules"] == [*stored, {
        "id": "rule-2", "description": "Beta: a tenth on write tools",
        "clauses": [{"attribute": "plan", "op": "in", "values": ["beta"]}],
        "serve": {"split": [{"variation": "read_only", "weight": 90_000}, {"variation": "write", "weight": 10_000}]}}]
    assert targeting(TOOL_FLAG, "production").rules == stored


def test_keyboard__operator_rolls_back_by_removing_a_rule__applies_at_once(login: Callable[[str], Page]) -> None:
    # Given the operator on the profile flag's page, whose production serves a 5 % split to beta accounts
    page = login("operator")
    stored = targeting(PROFILE_FLAG, "production").rules
    assert [rule["id"] for rule in stored] == ["internal", "beta-5"]
    page.goto(f"/p/{PROJECT}/flags/{PROFILE_FLAG}/")

    # When they open "Roll back…" on the production card
    tab_to(page, "el.textContent.trim() === 'Roll back…'")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=f"Propose a change to {PROFILE_FLAG} in Production")).to_be_visible()
    verdict = page.get_by_test_id("preview-verdict")
    expect(verdict).to_have_text("No change yet: edit the targeting.")
    # and remove the split rule (rule 2) with Space on its button
    tab_to(page, "el.getAttribute('aria-label') === 'Remove rule 2'")
    page.keyboard.press("Space")

    # Then the rule is gone, the focus is on "Add a rule", and the verdict says it applies at once
    expect(page.locator("#rule-1")).to_have_count(0)
    expect_focus_on(page, "rule-editor-add-rule")
    expect(verdict).to_contain_text("This change applies at once")
    expect(page.locator("#preview .diff-lines")).to_contain_text("removed")
    review_screenshot(page, "editor_rollback.png")

    # When they give the reason and submit
    tab_to(page, by_id("id_reason"))
    page.keyboard.type("Citations point at stale articles: beta back to the baseline.")
    tab_to(page, "el.type === 'submit' && el.textContent.trim() === 'Submit'")
    page.keyboard.press("Enter")

    # Then it applied at once: production keeps the internal rule only, and no request waits
    expect(page.locator("#messages")).to_contain_text("Applied at once in Production")
    assert targeting(PROFILE_FLAG, "production").rules == stored[:1]
    assert not ChangeRequest.objects.exists()


def test_keyboard__segment_rules_in_the_builder_and_the_json_view__saved(login: Callable[[str], Page]) -> None:
    # Given the owner on the new segment page
    page = login("owner")
    page.goto(f"/p/{PROJECT}/segments/new/")
    tab_to(page, by_id("id_key"))
    page.keyboard.type("support_staff")
    page.keyboard.press("Tab")
    page.keyboard.type("Support staff")

    # When they add a rule with a long unbroken description, an email clause and a negated segment clause
    tab_to(page, by_id("rule-editor-add-rule"))
    page.keyboard.press("Enter")
    expect_focus_on(page, "id_rule-0-description")
    page.keyboard.type("x" * 300)
    tab_to(page, by_id("id_rule-0-clause-0-attribute"))
    page.keyboard.type("email")
    page.keyboard.press("Tab")
    page.keyboard.type("ends")
    expect(page.locator("[id='id_rule-0-clause-0-op']")).to_have_value("ends_with")
    tab_to(page, by_id("id_rule-0-clause-0-values"))
    page.keyboard.type("@support.example.com")
    tab_to(page, "el.getAttribute('aria-label') === 'Add a clause to rule 1'")
    page.keyboard.press("Enter")
    expect_focus_on(page, "id_rule-0-clause-1-attribute")
    page.keyboard.press("Tab")
    page.keyboard.type("is in")
    expect(page.locator("[id='id_rule-0-clause-1-op']")).to_have_value("in_segment")
    clause = page.locator("#rule-0-clause-1")
    expect(clause.get_by_label("Attribute")).to_be_hidden()
    tab_to(page, "el.name === 'rule-0-clause-1-segments' && el.value === 'beta_accounts'")
    page.keyboard.press("Space")
    tab_to(page, by_id("id_rule-0-clause-1-negate"))
    page.keyboard.press("Space")
    # Then the long description wraps instead of widening the page
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    review_screenshot(page, "editor_segment_builder.png")

    # When they switch to the JSON view, the same rules are there
    tab_to(page, by_id("rule-editor-view-json"))
    page.keyboard.press("Enter")
    rules = page.get_by_label("Attribute rules (JSON)")
    expect(rules).to_be_visible()
    expect(page.get_by_role("button", name="JSON")).to_have_attribute("aria-pressed", "true")
    assert '"negate": true' in rules.input_value() and '"@support.example.com"' in rules.input_value()
    review_screenshot(page, "editor_segment_json.png")
    # and after editing the JSON, switching back shows the builder with the edited rules
    tab_to(page, by_id("id_rules"))
    page.keyboard.press("Control+A")
    page.keyboard.type('[{"description": "Pro plans", "clauses": [{"attribute": "plan", "op": "in", '
                       '"values": ["pro", "team"]}]}]')
    tab_to(page, by_id("rule-editor-view-builder"))
    page.keyboard.press("Enter")
    expect(page.locator("[id='id_rule-0-clause-0-values']")).to_have_value("pro\nteam")
    expect(page.locator("#rule-0-clause-1")).to_have_count(0)
    # and saving from the builder stores them
    tab_to(page, "el.type === 'submit' && el.textContent.trim() === 'Save segment'")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"/p/{PROJECT}/segments/$"))
    segment = Segment.objects.get(project__key=PROJECT, key="support_staff")
    assert segment.rules == [{"description": "Pro plans",
                              "clauses": [{"attribute": "plan", "op": "in", "values": ["pro", "team"]}]}]
