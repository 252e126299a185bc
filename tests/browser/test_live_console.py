"""The live console (featureops_site/live.py) in Chromium: pages update without a reload when
another person changes what they show. The whole site runs under uvicorn on the test database
(`tests.servers.uvicorn`), as `make run` serves it: console, OFREP and the event streams on one
origin. The other person acts through the services with an explicit actor, in this process: what
matters is that the commit reaches an open page (PostgreSQL NOTIFY → the stream → htmx)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from playwright.sync_api import Browser, BrowserContext, Page, expect

from flags.models import Targeting
from rollouts.change_control import approving
from rollouts.change_control.submitting import targeting_change_submit
from rollouts.models import ChangeRequest
from tests.browser.conftest import TIMEOUT_MS, fail_on_csp_reports, sign_in, watch_csp
from tests.browser.support import (
    BETA_WRITE_RULE,
    TOOL_FLAG,
    assert_no_full_page_load,
    review_screenshot,
    set_page_marker,
    through_approval,
)
from tests.servers import database_url_from_settings, uvicorn

pytestmark = [pytest.mark.browser, pytest.mark.postgres]


@pytest.fixture
def site(demo: dict[str, Any]) -> Iterator[str]:
    # The tests' MD5 hasher (tests/conftest.py) is unknown to the server process: store the demo
    # passwords with one it knows (PBKDF2, few iterations: a test's sign-in stays quick).
    hasher = PBKDF2PasswordHasher()
    for user in get_user_model().objects.all():
        user.password = hasher.encode(demo["password"], hasher.salt(), iterations=1_000)
        user.save(update_fields=["password"])
    with uvicorn(database_url_from_settings(), env={"STATIC_FROM_FINDERS": "1"}) as base:
        yield base


@pytest.fixture
def open_as(browser: Browser, site: str, demo: dict[str, Any], csp_violations: list[dict[str, Any]],
            request: pytest.FixtureRequest) -> Iterator[Any]:
    contexts: list[BrowserContext] = []

    def open_page(username: str) -> Page:
        context = browser.new_context(base_url=site, viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(TIMEOUT_MS)
        watch_csp(context, csp_violations)
        contexts.append(context)
        page = context.new_page()
        sign_in(page, username, demo["password"])
        return page

    yield open_page
    for context in contexts:
        context.close()
    if not getattr(request.node, "rep_call", None) or request.node.rep_call.passed:
        fail_on_csp_reports(csp_violations)


def _user(username: str) -> Any:
    return get_user_model().objects.get(username=username)


def _open_request() -> ChangeRequest:
    targeting = Targeting.objects.get(flag__key=TOOL_FLAG, environment__key="production")
    opened = targeting_change_submit(targeting=targeting, changes={"rules": [*targeting.rules, BETA_WRITE_RULE]},
                                     reason="Beta accounts asked for it.", actor=_user("owner"))
    assert isinstance(opened, ChangeRequest)
    return opened


def test_an_approval_by_someone_else_lands_on_the_open_request_page_and_in_the_nav_count(
    open_as: Any, demo: dict[str, Any],
) -> None:
    # Given pm has the change request page open (1 waiting for them in the nav) and has not reloaded since
    change_request = _open_request()
    pm = open_as("pm")
    pm.goto(f"/p/support-assistant/changes/{change_request.pk}/")
    expect(pm.get_by_test_id("cr-approvals")).to_contain_text(f"0 of {change_request.required_approvals}")
    expect(pm.locator("#nav-approvals .count")).to_have_text("1")
    set_page_marker(pm)

    # When lead approves it elsewhere
    approving.change_request_approve(change_request=change_request, actor=_user("lead"),
                                     comment="Checked the beta list.")
    approved = time.monotonic()

    # Then pm's page shows the approval and lead's comment, without a reload, within a second or so
    expect(pm.get_by_test_id("cr-approvals")).to_contain_text(f"1 of {change_request.required_approvals}",
                                                              timeout=3_000)
    landed = time.monotonic() - approved
    expect(pm.locator("#cr-body")).to_contain_text("Checked the beta list.")
    assert_no_full_page_load(pm)
    review_screenshot(pm, "live-approval-landed.png")
    assert landed < 2.0, f"the approval took {landed:.2f} s to reach the open page"

    # When the owner cancels the request elsewhere, the nav count of pm (on another page) drops to none
    pm.goto("/p/support-assistant/")
    expect(pm.locator("#nav-approvals .count")).to_have_text("1")
    set_page_marker(pm)
    from rollouts.change_control import applying

    applying.change_request_cancel(change_request=change_request, actor=_user("owner"))
    expect(pm.locator("#nav-approvals .count")).to_have_count(0, timeout=3_000)
    assert_no_full_page_load(pm)


def test_someone_typing_a_comment_keeps_it__the_page_says_it_changed_instead(
    open_as: Any, demo: dict[str, Any],
) -> None:
    # Given pm is typing a comment on the open request
    change_request = _open_request()
    pm = open_as("pm")
    pm.goto(f"/p/support-assistant/changes/{change_request.pk}/")
    comment = pm.locator("#cr-body textarea").first
    comment.fill("Half-written thoughts")

    # When lead approves it meanwhile
    approving.change_request_approve(change_request=change_request, actor=_user("lead"))

    # Then pm's text stays and a notice offers a reload instead of replacing the page under them
    notice = pm.get_by_text("This changed while you were typing")
    expect(notice).to_be_visible(timeout=3_000)
    expect(comment).to_have_value("Half-written thoughts")
    review_screenshot(pm, "live-typing-notice.png")


def test_a_plan_paused_elsewhere_shows_paused_on_the_open_plan_page_and_board(
    open_as: Any, demo: dict[str, Any],
) -> None:
    # Given a running rollout plan of the profile in production (started through its approval)
    from flags.models import Environment, Flag
    from rollouts.plans import design, transitions

    owner = _user("owner")
    plan = design.plan_from_template(
        flag=Flag.objects.get(key="support_assistant_profile"),
        environment=Environment.objects.get(project__key="support-assistant", key="production"),
        candidate="citation_first_v4", actor=owner, reason="Citation-first v4 is ready")
    plan = through_approval(transitions.plan_start(plan=plan, reason="internal users first", actor=owner))
    assert plan.status == "running"
    # and the owner has its page open, and the operator the rollout board
    page = open_as("owner")
    page.goto(f"/p/support-assistant/rollouts/{plan.pk}/")
    expect(page.locator("#plan-body")).to_contain_text("Pause")
    set_page_marker(page)
    board = open_as("operator")
    board.goto("/p/support-assistant/rollouts/")
    row = board.get_by_test_id("board-open").locator(f"tr[data-plan='{plan.pk}']")
    expect(row).to_contain_text("Running")
    set_page_marker(board)

    # When the plan is paused elsewhere (as a guardrail breach pauses it: by the system)
    from audit.services import SystemActor

    transitions.plan_pause(plan=plan, reason="p95 latency over its limit", actor=SystemActor("guardrails"))

    # Then both pages show it paused, without a reload; the plan page says in words what the plan
    # did and why, above its evidence
    expect(row).to_contain_text("Paused", timeout=3_000)
    expect(page.get_by_test_id("words-did")).to_have_text(re.compile(
        r"^p95 latency over its limit; paused at stage 1 \(Internal users\) by system:guardrails on \d\d \w{3} "
        r"\d\d:\d\d\.$"), timeout=3_000)
    assert_no_full_page_load(page)
    assert_no_full_page_load(board)
    review_screenshot(board, "live-board-paused.png")
    review_screenshot(page, "live-plan-paused-words.png")


def test_the_live_stream_refuses_a_visitor_who_is_not_signed_in(site: str) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(site + "/live/events", timeout=5)  # noqa: S310 - loopback
    assert refused.value.code == 401
