"""A real OpenFeature web provider (`@openfeature/ofrep-web-provider`, bundled from
tests/browser/ofrep_web/) in Chromium against the site served by uvicorn: it reads a flag over
OFREP, follows the bulk response's event stream, and re-fetches when the console changes the
flag; after the server restarts on the same port, its EventSource reconnects and the next change
reaches it too.

The test page is not a page of the site: Playwright answers `/__ofrep_test__.html` and the
bundle's URL itself, at the server's origin, so the provider's calls are same-origin (no CORS)
exactly as for an application served beside its flags. The uvicorn process reads the test's
PostgreSQL database, so the data is committed (transactional) and the demo is seeded in it."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.conf import global_settings
from django.contrib.auth import get_user_model

from audit.services import SystemActor
from flags import services
from flags.models import Environment, Targeting
from tests.browser.conftest import TIMEOUT_MS, fail_on_csp_reports, sign_in, watch_csp
from tests.browser.support import open_flag
from tests.conftest import missing_service
from tests.servers import ROOT, database_url_from_settings, free_port, uvicorn

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Response

pytestmark = [pytest.mark.browser, pytest.mark.postgres]

BUNDLE_DIR = Path(__file__).resolve().parent / "ofrep_web"
BUNDLE = BUNDLE_DIR / "dist" / "ofrep-web.js"
TEST_PAGE = "/__ofrep_test__.html"
BUNDLE_PATH = "/__ofrep_test__/ofrep-web.js"
TOOL_FLAG = "support_agent_tool_mode"  # development serves approval_required; off, its fallback read_only
ACCOUNT = {"targetingKey": "acct-dev-007", "accountId": "acct-dev-007"}
ARTIFACT = ROOT / "test-artifacts" / "ofrep-web-provider.png"


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, cwd=BUNDLE_DIR, capture_output=True, text=True, timeout=300, check=False)  # noqa: S603
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}", pytrace=False)


@pytest.fixture(scope="session")
def ofrep_web_bundle() -> Path:
    """The provider bundle: `npm ci` when node_modules is missing (from package-lock.json, the
    npm cache first), then esbuild into dist/ (git-ignored). No npm: skip, or fail under
    REQUIRE_SERVICES=1."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        missing_service("Node.js and npm are needed to build the OFREP web provider bundle")
    if not (BUNDLE_DIR / "node_modules" / "@openfeature" / "ofrep-web-provider").is_dir():
        _run([npm, "ci", "--prefer-offline", "--no-audit", "--no-fund"], "npm ci in tests/browser/ofrep_web")
    _run([node, "build.mjs"], "esbuild of tests/browser/ofrep_web/entry.js")
    return BUNDLE


def _test_page(raw_key: str) -> str:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>OFREP web provider</title>
<style>body {{ font: 15px system-ui, sans-serif; margin: 2em; }} td, th {{ padding: .3em .8em; text-align: left; }}
code {{ background: #f2f2f2; padding: 0 .3em; }}</style></head>
<body><h1>OFREP web provider test page</h1>
<p>Flag <code>{TOOL_FLAG}</code> for <code>{ACCOUNT["targetingKey"]}</code>: <strong id="value">…</strong></p>
<table><thead><tr><th>at (ms)</th><th>what</th><th>detail</th></tr></thead><tbody id="log"></tbody></table>
<script src="{BUNDLE_PATH}"></script>
<script>
  const harness = window.ofrepHarness;
  const t0 = performance.timeOrigin;
  const render = () => {{
    document.getElementById("value").textContent = String(harness.state.value);
    document.getElementById("log").innerHTML = harness.state.log.map((entry) =>
      `<tr><td>${{Math.round(entry.at - t0)}}</td><td>${{entry.kind}}</td><td>${{entry.detail ?? ""}}</td></tr>`).join("");
  }};
  setInterval(render, 100);
  harness.start({{sdkKey: {raw_key!r}, flagKey: {TOOL_FLAG!r}, defaultValue: "default-not-from-server",
                 context: {ACCOUNT!r}}}).catch((error) => harness.state.errors.push("start: " + error));
</script></body></html>"""


class _Site:
    """The uvicorn server on a fixed port, which the test stops and starts again."""

    def __init__(self, database_url: str, port: int, env: dict[str, str]) -> None:
        self.database_url, self.port, self.env = database_url, port, env
        self.running: contextlib.ExitStack | None = None

    def start(self) -> None:
        self.running = contextlib.ExitStack()
        self.running.enter_context(uvicorn(self.database_url, port=self.port, env=self.env))

    def stop(self) -> None:
        if self.running is not None:
            self.running.close()
            self.running = None


def _saved_at_ms(response: Response) -> float:
    """Wall-clock time (ms since the epoch, Chromium's clock) at which the save's response ended."""
    response.finished()
    timing = response.request.timing
    return timing["startTime"] + max(timing["responseEnd"], timing["responseStart"])


def _wait_for_change(provider: Page, count: int, value: str, within_ms: int) -> dict[str, Any]:
    """The `count`-th ConfigurationChanged (1-based) once the page has seen it with `value`."""
    provider.wait_for_function(
        "([count, value]) => { const c = window.ofrepHarness.state.changes;"
        " return c.length >= count && c[count - 1].value === value; }",
        arg=[count, value], timeout=within_ms)
    return provider.evaluate("(count) => window.ofrepHarness.state.changes[count - 1]", count)


def _toggle(console: Page, button: str) -> Response:
    """Click the development card's Turn on/off button, confirm, and return the save's response."""
    card = console.get_by_test_id("targeting-development")
    with console.expect_response(lambda r: r.request.method == "POST" and "/targeting/development/toggle/" in r.url
                                 ) as saved:
        card.get_by_role("button", name=button).click()
    return saved.value


def test_ofrep_web_provider__console_change_then_server_restart__provider_refetches_each_new_value(
    browser: Browser, demo: dict[str, Any], ofrep_web_bundle: Path, settings: Any,
) -> None:
    # (The tests hash passwords with MD5, which the server process does not accept: the owner's
    # is stored again with the hashers the server uses, Django's defaults.)
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    owner = get_user_model().objects.get(username="owner")
    owner.set_password(demo["password"])
    owner.save(update_fields=["password"])

    # Given an SDK key of the ungoverned development environment, where the tool-mode flag is on
    development = Environment.objects.get(project__key="support-assistant", key="development")
    _, raw_key = services.sdk_key_create(environment=development, name="web provider", actor=SystemActor("tests"))
    assert Targeting.objects.get(flag__key=TOOL_FLAG, environment=development).enabled is True
    port = free_port()
    database_url = database_url_from_settings()
    # (plain http on loopback: the cookies may not be marked Secure)
    server_env = {"STATIC_FROM_FINDERS": "1", "SESSION_COOKIE_SECURE": "0", "CSRF_COOKIE_SECURE": "0"}
    origin = f"http://127.0.0.1:{port}"
    csp_reports: list[dict[str, Any]] = []
    started = time.monotonic()

    with contextlib.ExitStack() as stack:
        site = _Site(database_url, port, server_env)
        stack.callback(site.stop)
        site.start()

        provider_context = browser.new_context(viewport={"width": 1000, "height": 700})
        stack.callback(provider_context.close)
        provider_context.set_default_timeout(TIMEOUT_MS)
        provider_context.route(origin + TEST_PAGE, lambda route: route.fulfill(
            status=200, content_type="text/html; charset=utf-8", body=_test_page(raw_key)))
        provider_context.route(origin + BUNDLE_PATH, lambda route: route.fulfill(
            status=200, content_type="text/javascript; charset=utf-8", body=ofrep_web_bundle.read_text()))
        provider = provider_context.new_page()

        console_context = browser.new_context(base_url=origin, viewport={"width": 1400, "height": 1000})
        stack.callback(console_context.close)
        console_context.set_default_timeout(TIMEOUT_MS)
        watch_csp(console_context, csp_reports)
        console = console_context.new_page()
        console.on("dialog", lambda dialog: dialog.accept())

        try:
            # When the page starts the provider at the server's origin
            provider.goto(origin + TEST_PAGE)

            # Then it becomes ready with the value development serves, read from the server
            provider.wait_for_function("window.ofrepHarness.state.ready === true")
            assert provider.evaluate("window.ofrepHarness.state.value") == "approval_required"
            assert provider.evaluate("window.ofrepHarness.state.errors") == []

            # When the owner turns the flag off in development, in the console
            sign_in(console, "owner", demo["password"])
            open_flag(console, TOOL_FLAG)
            saved = _toggle(console, "Turn off")
            assert saved.status == 200
            saved_at = _saved_at_ms(saved)

            # Then the provider hears it (event stream, re-fetch) and reads the fallback within a second
            first = _wait_for_change(provider, 1, "read_only", within_ms=5_000)
            latency = (first["at"] - saved_at) / 1000
            print(f"\nConfigurationChanged {latency * 1000:.0f} ms after the console's save response")
            assert TOOL_FLAG in first["flagsChanged"]
            assert latency < 1.0, f"the provider saw the change {latency:.3f} s after the save"
            assert Targeting.objects.get(flag__key=TOOL_FLAG, environment=development).enabled is False

            # When the server stops and starts again on the same port
            stopping = time.monotonic()
            site.stop()
            stopped, stopped_ms = time.monotonic(), time.time() * 1000
            site.start()
            restarted, restarted_ms = time.monotonic(), time.time() * 1000
            print(f"uvicorn stopped in {stopped - stopping:.2f} s, started again in {restarted - stopped:.2f} s")

            # And the owner turns the flag back on in the console (the session outlives the restart)
            open_flag(console, TOOL_FLAG)
            saved = _toggle(console, "Turn on")
            assert saved.status == 200
            saved_at = _saved_at_ms(saved)

            # Then the provider's stream has reconnected, and it reads the new value within a few seconds
            second = _wait_for_change(provider, 2, "approval_required", within_ms=10_000)
            recovery = (second["at"] - saved_at) / 1000
            print(f"after the restart: ConfigurationChanged {recovery * 1000:.0f} ms after the save")
            assert recovery < 3.0, f"after the restart the provider saw the change {recovery:.3f} s after the save"
            log = provider.evaluate("window.ofrepHarness.state.log")
            reopened = [entry["at"] for entry in log if entry["kind"] == "sse-open" and entry["at"] > stopped_ms]
            assert reopened, f"expected the event stream to open again after the restart: {log}"
            print(f"the event stream reopened {reopened[0] - restarted_ms:.0f} ms after the server answered again")
            print("page log:", [(entry["kind"], round(entry["at"] - log[0]["at"])) for entry in log])
            assert provider.evaluate("window.ofrepHarness.state.errors") == []
        finally:
            ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
            if not provider.is_closed():
                provider.wait_for_timeout(200)  # one render of the page's log
                provider.screenshot(path=str(ARTIFACT), full_page=True)
            print(f"test run {time.monotonic() - started:.1f} s")
    fail_on_csp_reports(csp_reports)
