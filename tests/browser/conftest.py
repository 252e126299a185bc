"""Browser fixtures: one Chromium per session (Debian's, driven by sync Playwright), a fresh
context and page per test against pytest-django's live server, the demo catalog, and a
screenshot in test-artifacts/<test name>.png when a test fails. Every context records the
Content-Security-Policy violations and refused htmx evals of its pages (`watch_csp`); a test
that passes with one recorded fails at teardown. The change-control walks open one browser
context per person (`as_user`) and call OFREP over HTTP on the real WSGI application
(`ofrep`)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import threading
import urllib.request
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from django.db import connections

from audit.services import SystemActor
from featureops_site.wsgi import application
from flags import services as flag_services
from flags.models import Environment
from flags.snapshot_store import SnapshotStore, reset_store
from tests.conftest import CHROMIUM, missing_service

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

    from tests.browser.support import Evaluate

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 10_000
POLL_SECONDS = 0.2  # settings.OFREP_SNAPSHOT_POLL_SECONDS outside tests

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


def _failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test failed in its set-up or its call (see pytest_runtest_makereport)."""
    return any(getattr(request.node, f"rep_{when}", None) is not None and getattr(request.node, f"rep_{when}").failed
               for when in ("setup", "call"))


def _artifact_name(nodename: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodename).strip("_") or "test"


def _screenshot(request: pytest.FixtureRequest, page: Page, name: str, failure_note: str) -> None:
    """Save the whole page to test-artifacts/<name>.png, for a failed test."""
    artifacts = Path(request.config.rootpath) / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(artifacts / f"{_artifact_name(name)}.png"), full_page=True)
    except Exception as exc:  # a failed screenshot must not hide the test failure
        request.node.add_report_section("teardown", "screenshot", f"{failure_note}: {exc}")


@pytest.fixture
def page(context: BrowserContext, request: pytest.FixtureRequest,
         csp_violations: list[dict[str, Any]]) -> Iterator[Page]:
    page = context.new_page()
    yield page
    failed = _failed(request)
    if not failed and not page.is_closed():
        page.wait_for_timeout(100)  # a violation is reported in a task of its own, just after
    if failed and not page.is_closed():
        _screenshot(request, page, request.node.name, "could not save a screenshot")
    page.close()
    if not failed:
        fail_on_csp_reports(csp_violations)


@pytest.fixture
def login(page: Page, demo: dict[str, Any]) -> Callable[[str], Page]:
    """Log in through the login form as one of the demo users; lands on the project list."""

    def log_in(username: str) -> Page:
        sign_in(page, username, demo["password"])
        return page

    return log_in


def sign_in(page: Page, username: str, password: str) -> None:
    """Log in through the login form; lands on the project list."""
    from playwright.sync_api import expect

    page.goto("/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Your projects", level=1)).to_be_visible()


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
        sign_in(page, username, demo["password"])
        return page

    yield open_as
    failed = _failed(request)
    for username, context, page in opened:
        if failed and not page.is_closed():
            _screenshot(request, page, f"{request.node.name}-{username}", f"{username}: no screenshot")
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


@pytest.fixture
def ofrep(demo: dict[str, Any]) -> Iterator[Evaluate]:
    """evaluate(flag_key, context) -> the OFREP body, with a production SDK key, over HTTP.

    OFREP is called over HTTP on loopback, on the project's real WSGI application
    (`featureops_site.wsgi.application`, the one gunicorn serves). pytest-django's `live_server`
    cannot be used for it: it serves Django's plain WSGI handler, and `/ofrep/v1/...` is not a
    Django URL but a lean WSGI app placed in front of Django in `featureops_site/wsgi.py`. That
    app reads in-process snapshots refreshed by a poller thread; the test settings switch the
    poller off (OFREP_SNAPSHOT_POLL_SECONDS=0), so the fixture installs a store polling at the
    production default (0.2 s). The browser writes through the live server, the poller notices
    the committed version bump and rebuilds, exactly as in a deployed process: no test code
    refreshes the snapshot by hand, so a measured latency (the kill switch's) is the real one."""
    environment = Environment.objects.get(project__key="support-assistant", key="production")
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
