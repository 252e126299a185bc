"""Incidents in view, walked in Chromium (issue 19, parts 4 and 7): the kill switch refuses an
empty reason beside the field before any dialog; the operator starts incident mode after
seeing which flags it stops and what each will serve; the banner shows on the flag list and
a stopped card says what it serves and why; the owner's navigation counts the follow-up; the
lift leaves the paused plan paused, tells its owner, and its page says so. Nothing overflows
1280 px with a 1,000-character word as the incident reason."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Page, expect

from flags import services as flag_services
from flags.constants import BehaviorSurface, Lifetime, ValueType
from flags.models import Environment, Targeting
from notifications.models import Notification
from rollouts.models import Incident, RolloutPlan
from rollouts.plans import design, transitions
from tests.browser.support import (
    PROFILE_FLAG,
    PROJECT,
    accept_dialogs,
    open_flag,
    production_card,
    review_screenshot,
    through_approval,
)
from tests.factories import TEST_ACTOR, set_up_targeting

pytestmark = pytest.mark.browser
BOOLEAN = "support_reply_suggestions"
LONG_WORD = "x" * 1000


def _running_plan_in_production() -> RolloutPlan:
    owner = get_user_model().objects.get(username="owner")
    production = Environment.objects.get(project__key=PROJECT, key="production")
    plan = design.plan_create(
        flag=production.project.flags.get(key=PROFILE_FLAG), environment=production, baseline="baseline_v3",
        candidate="citation_first_v4", actor=owner, reason="v4 is ready",
        stages=[{"name": "Internal users", "segments": ["internal_users"], "percentage": 0, "min_bake_minutes": 0,
                 "guardrails": []},
                {"name": "5 %", "segments": ["internal_users"], "percentage": 5_000, "min_bake_minutes": 0,
                 "guardrails": []}])
    plan = through_approval(transitions.plan_start(plan=plan, reason="Go", actor=owner))
    assert plan.status == RolloutPlan.Status.RUNNING
    return plan


def _fits(page: Page, width: int = 1280) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{page.url} is {scroll} px wide at {width} px"


def test_incident_in_view__preview_banner_card_nav_reason_first_lift_notice(
    as_user: Callable[[str], Page], demo: dict[str, Any],
) -> None:
    # Given a boolean flag on in production and a running rollout plan of the profile flag there
    flag = flag_services.flag_create(
        project=demo["project"], key=BOOLEAN, name="Reply suggestions", behavior_surface=BehaviorSurface.OTHER,
        value_type=ValueType.BOOLEAN, lifetime=Lifetime.OPERATIONAL, actor=TEST_ACTOR, fallback_variation_key="off",
        variations=[{"key": "off", "value": False}, {"key": "on", "value": True, "risk_rank": 1}])
    set_up_targeting(Targeting.objects.get(flag=flag, environment__key="production"), enabled=True)
    plan = _running_plan_in_production()
    on_in_production = list(Targeting.objects.filter(environment__project__key=PROJECT, environment__key="production",
                                                     enabled=True).values_list("flag__key", flat=True))
    assert BOOLEAN in on_in_production and PROFILE_FLAG in on_in_production

    # When the operator opens the kill switch in Staging and submits it without a reason
    operator = as_user("operator")
    dialogs = accept_dialogs(operator)
    posts: list[str] = []
    operator.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    open_flag(operator, PROFILE_FLAG)
    staging = operator.get_by_test_id("targeting-staging")
    staging.get_by_role("button", name="Kill switch…").click()
    form = operator.locator("#killswitch-staging form")
    form.get_by_role("button", name=re.compile(r"^Send everyone to ")).click()

    # Then the error stands beside the field, no dialog appeared and nothing was posted
    field = form.locator(".field").filter(has=operator.locator("[name='reason']"))
    expect(field).to_have_class(re.compile(r"\bhas-error\b"))
    expect(field.locator(".client-error")).to_contain_text("Say why: a reason is required")
    expect(form.get_by_label("Reason")).to_have_attribute("aria-invalid", "true")
    review_screenshot(operator, "incidents-01-killswitch-empty-reason.png")
    assert dialogs == [] and posts == []
    # Typing a reason clears the mark
    form.get_by_label("Reason").fill("checking")
    expect(field).not_to_have_class(re.compile(r"\bhas-error\b"))
    form.get_by_role("button", name="Cancel").click()

    # When the operator opens incident mode: Production is chosen, the preview lists its flags
    operator.goto(f"/p/{PROJECT}/incidents/")
    preview = operator.get_by_test_id("incident-preview")
    for key in on_in_production:
        expect(preview.locator("code", has_text=re.compile(rf"^{key}$"))).to_have_count(1)
    expect(preview.locator("tr", has_text=BOOLEAN)).to_contain_text("off (false)")
    # Ticking one surface narrows it, live (htmx)
    operator.get_by_label("Agent tools").check()
    expect(preview).not_to_contain_text(BOOLEAN)
    expect(preview).to_contain_text("support_agent_tool_mode")
    operator.get_by_label("Agent tools").uncheck()
    expect(preview).to_contain_text(BOOLEAN)
    review_screenshot(operator, "incidents-02-preview.png")

    # And starts it without a reason: refused before the question
    operator.get_by_role("button", name="Send to fallbacks").click()
    expect(operator.locator(".field.has-error .client-error")).to_have_count(1)
    assert dialogs == []

    # When they give a reason (one 1,000-character word) and confirm
    operator.get_by_label("Reason").fill(LONG_WORD)
    operator.get_by_role("button", name="Send to fallbacks").click()
    expect(operator.get_by_test_id("active-incident")).to_be_visible()
    count = len(on_in_production)
    assert dialogs == [f"Send {count} flags in Production to their fallback now?"]
    incident = Incident.objects.get()
    assert sorted(a["flag"] for a in incident.affected) == sorted(on_in_production)

    # Then the flag list shows the banner and the stopped flags
    operator.goto(f"/p/{PROJECT}/")
    banner = operator.get_by_test_id("incident-banner")
    expect(banner).to_contain_text("Incident mode is on in Production since")
    expect(banner).to_contain_text(f"(by operator): {count} flags serve their fallbacks")
    expect(banner.get_by_role("link", name="Incident page")).to_have_attribute(
        "href", f"/p/{PROJECT}/incidents/#incident-{incident.pk}")
    row = operator.locator("tr", has=operator.get_by_role("link", name=BOOLEAN))
    expect(row.locator(".badge.bad", has_text="Incident")).to_have_count(1)
    review_screenshot(operator, "incidents-03-flag-list-banner.png")
    _fits(operator)

    # And the boolean flag's production card says what it serves and why
    operator.set_viewport_size({"width": 1400, "height": 1000})
    open_flag(operator, BOOLEAN)
    card = production_card(operator)
    expect(card.locator(".spread .badge").last).to_have_text("Incident")
    expect(card.get_by_test_id("stop-fact")).to_contain_text("Off: serves off (false) — incident mode since")
    expect(card.get_by_test_id("stop-fact").get_by_role("link", name=f"incident {incident.pk}")).to_be_visible()
    review_screenshot(operator, "incidents-04-card.png")
    _fits(operator)
    operator.goto(f"/p/{PROJECT}/incidents/")
    _fits(operator)

    # Then the owner's navigation counts the follow-up incident mode opened
    owner = as_user("owner")
    badge = owner.locator("#nav-approvals .count")
    expect(badge).to_have_text("1")
    expect(badge).to_have_attribute("aria-label", "1 follow-up waits for you")
    owner.goto(f"/p/{PROJECT}/rollouts/{plan.pk}/")
    expect(owner.get_by_test_id("plan-status")).to_have_text("Paused")
    expect(owner.get_by_test_id("plan-incident-pause")).to_contain_text(f"Paused by incident {incident.pk}")

    # When the operator lifts incident mode
    operator.set_viewport_size({"width": 1400, "height": 1000})
    operator.goto(f"/p/{PROJECT}/incidents/")
    lift = operator.get_by_test_id("active-incident")
    lift.get_by_role("button", name="Lift incident mode").click()
    expect(lift.locator(".client-error")).to_have_count(1)  # no reason: refused before the question
    assert len(dialogs) == 1
    lift.get_by_label("Why it can be lifted").fill("Provider back")
    lift.get_by_role("button", name="Lift incident mode").click()
    expect(operator.get_by_test_id("active-incident")).to_have_count(0)
    expect(operator.get_by_test_id("incident-banner")).to_have_count(0)

    # Then the plan stays paused, its owner is told, and its page says so
    assert RolloutPlan.objects.get(pk=plan.pk).status == RolloutPlan.Status.PAUSED
    title = f"Incident lifted: plan {plan.pk} for flag {PROFILE_FLAG} is still paused; resume when ready"
    assert Notification.objects.filter(recipient__username="owner", title=title).count() == 1
    owner.goto("/notifications/")
    expect(owner.get_by_text(title)).to_be_visible()
    owner.goto(f"/p/{PROJECT}/rollouts/{plan.pk}/")
    notice = owner.get_by_test_id("plan-incident-pause")
    expect(notice).to_contain_text(f"Paused by incident {incident.pk} (lifted ")
    expect(notice).to_contain_text("by operator): resume when the evidence is good.")
    expect(owner.get_by_test_id("plan-status")).to_have_text("Paused")
    review_screenshot(owner, "incidents-05-plan-after-lift.png")
    _fits(owner)

    # When the owner presses Resume without a reason: refused beside the field, no dialog, nothing posted
    owner.set_viewport_size({"width": 1400, "height": 1000})
    owner_dialogs = accept_dialogs(owner)
    owner_posts: list[str] = []
    owner.on("request", lambda r: owner_posts.append(r.url) if r.method == "POST" else None)
    owner.get_by_role("button", name="Resume").click()
    reason = owner.locator("#plan-actions .field").filter(has=owner.locator("[name='reason']"))
    expect(reason).to_have_class(re.compile(r"\bhas-error\b"))
    expect(reason.locator(".client-error")).to_contain_text("Say why: a reason is required")
    assert owner_dialogs == [] and owner_posts == []
    review_screenshot(owner, "incidents-06-resume-empty-reason.png")
    # With a reason, the question comes, and the plan runs again
    owner.locator("#plan-actions").get_by_label("Reason").fill("Evidence is good again")
    owner.get_by_role("button", name="Resume").click()
    expect(owner.get_by_test_id("plan-status")).to_have_text("Running")
    assert len(owner_dialogs) == 1 and owner_dialogs[0].startswith("Resume ")
    expect(owner.get_by_test_id("plan-incident-pause")).to_have_count(0)
