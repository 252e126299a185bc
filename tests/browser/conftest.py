"""Browser fixtures: one Chromium per session (Debian's, driven by sync Playwright), a fresh
context and page per test against pytest-django's live server, the demo catalog, and a
screenshot in test-artifacts/<test name>.png when a test fails. Every context records the
Content-Security-Policy violations and refused htmx evals of its pages (`watch_csp`); a test
that passes with one recorded fails at teardown."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import CHROMIUM, missing_service

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 10_000

# Runs in every document before the page's own scripts. Each report goes to Python through
# the __cspReport binding (it survives navigations) and to window.__cspReports (so a test
# can wait for one in the page).
CSP_WATCH_SCRIPT = """
(() => {
  window.__cspReports = [];
  const report = (detail) => {
    const entry = {page: location.pathname, ...detail};
    window.__cspReports.push(entry);
    if (window.__cspReport) { window.__cspReport(entry); }
  };
  document.addEventListener("securitypolicyviolation", (event) => report({
    kind: "csp-violation", directive: event.effectiveDirective, blocked: event.blockedURI,
    source: `${event.sourceFile}:${event.lineNumber}`}), true);
  document.addEventListener("htmx:evalDisallowedError", (event) => report({
    kind: "htmx-eval-refused", element: String(event.target && event.target.outerHTML).slice(0, 200)}), true);
})();
"""


def watch_csp(context: BrowserContext, reports: list[dict[str, Any]]) -> None:
    """Append to `reports` each CSP violation (and each eval htmx refused) in any page of `context`."""
    context.expose_binding("__cspReport", lambda _source, entry: reports.append(entry))
    context.add_init_script(CSP_WATCH_SCRIPT)


def fail_on_csp_reports(reports: list[dict[str, Any]]) -> None:
    if reports:
        pytest.fail("the Content-Security-Policy refused something in the page:\n"
                    + "\n".join(str(entry) for entry in reports), pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Keep each phase's report on the item (rep_setup, rep_call, rep_teardown) for the page
    fixture's teardown, which decides whether to take a screenshot."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _chromium_path() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    return shutil.which("chromium") or CHROMIUM


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    # The root conftest's skip-or-fail check is function scoped and runs after this
    # session fixture, so repeat it here before launching anything.
    if importlib.util.find_spec("playwright") is None:
        missing_service("Playwright for Python is not installed")
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        missing_service(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")

    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def demo(transactional_db: None) -> dict[str, Any]:
    """The demo catalog (project support-assistant, three flags, one user per role)."""
    from flags.demo import DEMO_PASSWORD, seed_demo

    project, users = seed_demo()
    return {"project": project, "users": users, "password": DEMO_PASSWORD}


@pytest.fixture
def csp_violations() -> list[dict[str, Any]]:
    """What the CSP refused in the test's pages (see watch_csp)."""
    return []


@pytest.fixture
def context(browser: Browser, live_server: Any, demo: dict[str, Any],
            csp_violations: list[dict[str, Any]]) -> Iterator[BrowserContext]:
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    watch_csp(context, csp_violations)
    try:
        yield context
    finally:
        context.close()


def _artifact_name(nodename: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodename).strip("_") or "test"


@pytest.fixture
def page(context: BrowserContext, request: pytest.FixtureRequest,
         csp_violations: list[dict[str, Any]]) -> Iterator[Page]:
    page = context.new_page()
    yield page
    failed = any(
        getattr(request.node, f"rep_{when}", None) is not None and getattr(request.node, f"rep_{when}").failed
        for when in ("setup", "call")
    )
    if not failed and not page.is_closed():
        page.wait_for_timeout(100)  # a violation is reported in a task of its own, just after
    if failed and not page.is_closed():
        artifacts = Path(request.config.rootpath) / "test-artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        try:
            page.screenshot(path=str(artifacts / f"{_artifact_name(request.node.name)}.png"), full_page=True)
        except Exception as exc:  # a failed screenshot must not hide the test failure
            request.node.add_report_section("teardown", "screenshot", f"could not save a screenshot: {exc}")
    page.close()
    if not failed:
        fail_on_csp_reports(csp_violations)


@pytest.fixture
def login(page: Page, demo: dict[str, Any]) -> Callable[[str], Page]:
    """Log in through the login form as one of the demo users; lands on the project list."""
    from playwright.sync_api import expect

    def log_in(username: str) -> Page:
        page.goto("/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(demo["password"])
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Your projects", level=1)).to_be_visible()
        return page

    return log_in
