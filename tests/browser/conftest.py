"""Browser fixtures: one Chromium per session (Debian's, driven by sync Playwright), a fresh
context and page per test against pytest-django's live server, the demo catalog, and a
screenshot in test-artifacts/<test name>.png when a test fails."""

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
def context(browser: Browser, live_server: Any, demo: dict[str, Any]) -> Iterator[BrowserContext]:
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()


def _artifact_name(nodename: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodename).strip("_") or "test"


@pytest.fixture
def page(context: BrowserContext, request: pytest.FixtureRequest) -> Iterator[Page]:
    page = context.new_page()
    yield page
    failed = any(
        getattr(request.node, f"rep_{when}", None) is not None and getattr(request.node, f"rep_{when}").failed
        for when in ("setup", "call")
    )
    if failed and not page.is_closed():
        artifacts = Path(request.config.rootpath) / "test-artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        try:
            page.screenshot(path=str(artifacts / f"{_artifact_name(request.node.name)}.png"), full_page=True)
        except Exception as exc:  # a failed screenshot must not hide the test failure
            request.node.add_report_section("teardown", "screenshot", f"could not save a screenshot: {exc}")
    page.close()


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
