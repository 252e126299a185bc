"""Long text never breaks a page (issue 19): with a 1,000-character unbroken word in every
free-text field people type, put there through the services as the console would, every page
that shows them stays within a 1280 px wide window, and its action buttons stay on screen.

Fields with a shorter limit get the longest word they accept: names 200 characters (flag,
variation, segment, project, a flag's first audience), the owning team, the primary metric, SDK
key and API token names and stage names 100, tags 50. Everything else (descriptions, the contract's
texts, reasons, comments, notes, a rule's description, the guardrail metrics list) takes the
whole 1,000."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import Page, expect

from audit.constants import AuditAction
from audit.models import AuditEvent
from flags import services
from flags.constants import Role
from flags.models import Environment, Flag, Project, Targeting, Variation
from flags.services.access_tokens import service_token_create
from rollouts.change_control import approving, follow_ups, incident_mode, kill_switch, submitting
from rollouts.models import ChangeRequest, FollowUp, RolloutPlan
from rollouts.plans import design
from tests.browser.conftest import sign_in
from tests.browser.support import PROFILE_FLAG, PROJECT, TOOL_FLAG, review_screenshot

pytestmark = pytest.mark.browser
WIDTH = 1280
LONG = "Unbroken" * 125  # 1,000 characters, no break opportunity
assert len(LONG) == 1000
FALLBACK_FLAG = "support_ai_incident_fallback"


def word(limit: int) -> str:
    """The longest part of the long word a field of `limit` characters accepts."""
    return LONG[:limit]


def user(username: str) -> Any:
    return get_user_model().objects.get(username=username)


def targeting(flag_key: str, env_key: str) -> Targeting:
    return Targeting.objects.select_related("flag", "environment").get(
        flag__project__key=PROJECT, flag__key=flag_key, environment__key=env_key)


@dataclass
class LongTrail:
    pending: ChangeRequest  # waiting for lead's approval
    approved: ChangeRequest  # approved: the owner may apply it
    plan: RolloutPlan
    audit_rows: list[int] = field(default_factory=list)  # rows whose detail the walk opens


def fill_every_field(project: Project) -> LongTrail:
    """Long words in every free-text field, each written by its service with a person as actor."""
    owner, pm, lead, operator, admin = (user(n) for n in ("owner", "pm", "lead", "operator", "admin"))
    production = Environment.objects.get(project=project, key="production")

    # A second project whose name and description are long (no service renames a project)
    other = services.project_create(key="long-text", name=word(200), description=LONG, actor=admin)
    for name in ("owner", "pm", "lead", "operator", "auditor", "admin"):
        services.membership_grant(project=other, user=user(name), role=Role.VIEWER, actor=admin)

    # The tool-mode flag's contract, a variation and a segment
    tool = Flag.objects.get(project=project, key=TOOL_FLAG)
    services.flag_update(flag=tool, actor=owner, reason=LONG, name=word(200), description=LONG, owner_team=word(100),
                         cleanup_rule=LONG, primary_metric=word(100), guardrail_metrics=[LONG], rollback_action=LONG,
                         first_audience=word(200), tags=[word(50)])
    services.variation_update(variation=Variation.objects.get(flag=tool, key="read_only"), actor=owner, reason=LONG,
                              name=word(200), description=LONG)
    services.segment_create(project=project, key="long_text_accounts", name=word(200), description=LONG, actor=owner)

    # A change request waiting for a second approval: a long reason, a rule with a long
    # description, a comment and an approval comment
    tool_production = targeting(TOOL_FLAG, "production")
    rule = {"id": "long", "description": LONG, "clauses": [{"op": "in_segment", "values": ["beta_accounts"]}],
            "serve": {"variation": "write"}}
    pending = submitting.targeting_change_submit(targeting=tool_production,
                                                 changes={"rules": [*tool_production.rules, rule]},
                                                 reason=LONG, actor=owner)
    approving.change_request_comment(change_request=pending, body=LONG, actor=pm)
    approving.change_request_approve(change_request=pending, actor=pm, comment=LONG)

    # A change request with both approvals, for its Apply button
    profile_production = targeting(PROFILE_FLAG, "production")
    widen = {"id": "long-beta", "description": LONG, "clauses": [{"op": "in_segment", "values": ["beta_accounts"]}],
             "serve": {"variation": "citation_first_v4"}}
    approved = submitting.targeting_change_submit(targeting=profile_production,
                                                  changes={"rules": [*profile_production.rules, widen]},
                                                  reason=LONG, actor=owner)
    for approver in (pm, lead):
        if ChangeRequest.objects.get(pk=approved.pk).status == ChangeRequest.Status.PENDING:
            approving.change_request_approve(change_request=approved, actor=approver, comment=LONG)

    # A kill switch (its follow-up stays open), incident mode started and lifted in staging (its
    # follow-up acknowledged with a long note), and incident mode left on in development
    kill_switch.killswitch_flip(targeting=targeting(FALLBACK_FLAG, "development"), reason=LONG, actor=operator)
    staging = Environment.objects.get(project=project, key="staging")
    incident = incident_mode.incident_start(environment=staging, surfaces=[], reason=LONG, actor=operator)
    incident_mode.incident_lift(incident=incident, reason=LONG, actor=operator)
    follow_up = FollowUp.objects.get(incident=incident)
    follow_ups.follow_up_acknowledge(follow_up=follow_up, note=LONG, actor=pm)
    development = Environment.objects.get(project=project, key="development")
    incident_mode.incident_start(environment=development, surfaces=[], reason=LONG, actor=operator)

    # A rollout plan with a long reason and a long stage name
    profile = Flag.objects.get(project=project, key=PROFILE_FLAG)
    plan = design.plan_create(flag=profile, environment=staging, baseline="baseline_v3", candidate="citation_first_v4",
                              stages=[{"name": word(100), "segments": ["internal_users"], "percentage": 0},
                                      {"name": "Everyone", "segments": ["internal_users"], "percentage": 100_000}],
                              actor=owner, reason=LONG[:1800])

    # An SDK key and an API token with long names
    services.sdk_key_create(environment=production, name=word(100), actor=admin)
    service_token_create(project=project, name=word(100), scopes=["read"],
                                  expires_at=timezone.now() + datetime.timedelta(days=30), actor=admin)

    rows = [AuditEvent.objects.filter(action=action).order_by("-id").values_list("id", flat=True)[0]
            for action in (AuditAction.CHANGE_REQUEST_COMMENTED, AuditAction.FLAG_UPDATED, AuditAction.INCIDENT_LIFTED)]
    return LongTrail(pending=pending, approved=approved, plan=plan, audit_rows=rows)


# --- what is measured -----------------------------------------------------------------------

# The elements that reach past the window (their box, or text overflowing it), deepest first:
# the first names what pushes the page wider.
OVERFLOW_SCRIPT = """
(width) => {
  const reach = (element) => {
    const box = element.getBoundingClientRect();
    return box.left + scrollX + Math.max(box.width, element.scrollWidth);
  };
  const wide = [];
  for (const element of document.querySelectorAll("body *")) {
    if (reach(element) > width + 1 && ![...element.children].some((child) => reach(child) > width + 1)) {
      const classes = typeof element.className === "string" && element.className.trim()
        ? "." + element.className.trim().split(/\\s+/).join(".") : "";
      const text = (element.innerText || "").trim().slice(0, 30);
      wide.push(`<${element.tagName.toLowerCase()}${element.id ? "#" + element.id : ""}${classes}> “${text}”`
                + ` reaching ${Math.round(reach(element))} px`);
    }
  }
  return wide.slice(0, 4);
}
"""
# Every visible action: buttons and links styled as buttons.
BUTTONS_SCRIPT = """
() => [...document.querySelectorAll("button, a.button, input[type=submit]")]
  .filter((element) => element.offsetParent !== null && element.getBoundingClientRect().width > 0)
  .map((element) => {
    const box = element.getBoundingClientRect();
    return {text: (element.innerText || element.value || "").trim().slice(0, 40), left: box.left + scrollX,
            right: box.right + scrollX};
  })
"""


@dataclass
class Check:
    problems: list[str] = field(default_factory=list)

    def page(self, page: Page, name: str, *, actions: tuple[str, ...] = ()) -> None:
        """The page fits the window, its named actions are there, and every action is on screen."""
        page.wait_for_load_state("networkidle")
        review_screenshot(page, f"{name}.png")
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        if scroll_width > WIDTH:
            culprits = page.evaluate(OVERFLOW_SCRIPT, WIDTH)
            self.problems.append(f"{name}: {page.url} is {scroll_width} px wide; widest: {culprits}")
        buttons = page.evaluate(BUTTONS_SCRIPT)
        for action in actions:
            if not any(b["text"].startswith(action) for b in buttons):
                self.problems.append(f"{name}: no visible “{action}” button")
        for button in buttons:
            if button["left"] < 0 or button["right"] > WIDTH:
                self.problems.append(f"{name}: button “{button['text']}” spans {button['left']:.0f}–"
                                     f"{button['right']:.0f} px, outside the {WIDTH} px window")


def as_person(page: Page, username: str, password: str) -> None:
    page.context.clear_cookies()
    sign_in(page, username, password)


def test_long_words_in_every_field__every_page_fits_1280px_and_keeps_its_buttons_on_screen(
    page: Page, demo: dict[str, Any],
) -> None:
    # Given a 1,000-character word (or the longest a field takes) in every free-text field
    project = demo["project"]
    trail = fill_every_field(project)
    password = demo["password"]
    page.set_viewport_size({"width": WIDTH, "height": 800})
    check = Check()
    base = f"/p/{PROJECT}"

    # When the people who read them open each page at 1280 × 800
    # Then each page is at most 1280 px wide and its actions are within the window
    as_person(page, "owner", password)
    check.page(page, "projects")
    page.goto(f"{base}/")
    check.page(page, "flag-list", actions=("New flag",))
    page.goto(f"{base}/flags/{TOOL_FLAG}/")
    check.page(page, "flag-page-owner")
    page.goto(f"{base}/flags/{TOOL_FLAG}/?tab=history")
    check.page(page, "flag-history")
    page.goto(f"{base}/segments/")
    check.page(page, "segments", actions=("New segment",))
    page.goto(f"/p/{PROJECT}/changes/{trail.approved.pk}/")
    check.page(page, "change-request-approved", actions=("Apply now",))
    page.goto(f"{base}/rollouts/{trail.plan.pk}/")
    check.page(page, "plan-page")
    page.goto(f"{base}/rollouts/")
    check.page(page, "rollout-board")
    page.goto("/notifications/")
    check.page(page, "notifications")

    as_person(page, "lead", password)
    page.goto(f"/p/{PROJECT}/changes/{trail.pending.pk}/")
    check.page(page, "change-request-pending", actions=("Approve", "Reject"))
    page.goto("/changes/")
    check.page(page, "inbox")

    as_person(page, "operator", password)
    page.goto(f"{base}/flags/{TOOL_FLAG}/")
    check.page(page, "flag-page-operator", actions=("Kill switch",))
    page.goto(f"{base}/incidents/")
    check.page(page, "incidents", actions=("Lift incident mode",))
    page.goto("/notifications/")
    check.page(page, "notifications-operator")

    as_person(page, "admin", password)
    page.goto(f"{base}/sdk-keys/")
    check.page(page, "sdk-keys")
    page.goto(f"{base}/members/")
    check.page(page, "members")

    as_person(page, "auditor", password)
    page.goto(f"/audit/?project={project.pk}")
    check.page(page, "audit-trail")
    for event_id in trail.audit_rows:
        row = page.get_by_test_id("audit-row").filter(has=page.locator("td:first-child", has_text=str(event_id)))
        row.get_by_role("button").click()
        expect(page.locator(f"#detail-{event_id}").get_by_test_id("audit-diff")).to_be_visible()
    check.page(page, "audit-trail-details")

    assert not check.problems, "\n".join(check.problems)
