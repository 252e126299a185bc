"""Single sign-on in Chromium through a real OpenID Connect provider: the certified `oidc-provider`
package (tests/browser/oidc/provider.mjs, run with Node), PKCE required, RP-initiated logout on,
test accounts with a groups claim. The console is pytest-django's live server, configured for it.

Walked here: an admin maps groups to roles on the project's sign-in page; a new person signs in and
holds exactly the roles their groups map to; the provider changes their groups and the next sign-in
revokes the role (the identity provider is the actor in the trail); logging out ends the provider's
session too (the next sign-in asks for the password again); the same callback URL twice, a token
request without the PKCE verifier and a cancelled sign-in each end on a clear page, signed out; and
with local passwords off the password form is gone and a posted password is refused. Forged,
expired and wrong-audience ID tokens are refused at the callback in tests/identity/test_sign_in.py
(a provider whose tokens the test signs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.sessions.backends.db import SessionStore
from playwright.sync_api import expect

from audit.models import AuditEvent
from flags.constants import Role
from flags.models import Membership
from identity import provider
from identity.models import OidcIdentity
from tests.browser.conftest import TIMEOUT_MS, watch_csp
from tests.browser.support import accept_dialogs, review_screenshot
from tests.conftest import missing_service
from tests.servers import free_port, stop

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.browser

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
CLIENT_ID = "featureops-console"
CLIENT_SECRET = "test-provider-client-secret-0123456789"  # noqa: S105 - the test provider's
PROVIDER_NAME = "Test IdP"
PROJECT = "support-assistant"
ACCOUNTS = {
    "dana": {"password": "dana-at-the-idp", "sub": "dana-0001", "email": "dana@example.com", "name": "Dana Scully",
             "groups": ["support-ai-approvers", "all-staff"]},
    "erin": {"password": "erin-at-the-idp", "sub": "erin-0002", "email": "erin@example.com", "name": "Erin Hale",
             "groups": ["support-ai-operators"]},
}


@dataclass
class RunningProvider:
    issuer: str

    @property
    def actor_label(self) -> str:
        return f"system:oidc:{self.issuer.removeprefix('http://')}"

    def set_groups(self, username: str, groups: list[str]) -> None:
        """Change what the provider says about the account from its next sign-in on."""
        call = urllib.request.Request(f"{self.issuer}/__test__/accounts/{username}", method="POST",  # noqa: S310
                                      data=json.dumps({"groups": groups}).encode(),
                                      headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(call, timeout=5) as response:  # noqa: S310 - loopback
            assert json.load(response)["groups"] == groups


@pytest.fixture(scope="session")
def oidc_node() -> str:
    """Node, with the provider's packages installed from package-lock.json (`npm ci` when missing)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        missing_service("Node.js and npm are needed to run the test OpenID provider (tests/browser/oidc)")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        done = subprocess.run([npm, "ci", "--prefer-offline", "--no-audit", "--no-fund"], cwd=OIDC_DIR,  # noqa: S603
                              capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            pytest.fail(f"npm ci in tests/browser/oidc failed:\n{(done.stdout + done.stderr)[-3000:]}", pytrace=False)
    return node  # type: ignore[return-value]


@pytest.fixture
def idp(oidc_node: str, live_server: Any, settings: Any, demo: dict[str, Any]) -> Iterator[RunningProvider]:
    """The provider on a free loopback port, its client registered for the live server, and the
    console configured for it."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OIDC_PORT": str(port), "OIDC_CLIENT_ID": CLIENT_ID, "OIDC_CLIENT_SECRET": CLIENT_SECRET,
           "OIDC_REDIRECT_URI": f"{live_server.url}/sso/callback/",
           "OIDC_POST_LOGOUT_REDIRECT_URI": f"{live_server.url}/login/", "OIDC_ACCOUNTS": json.dumps(ACCOUNTS)}
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen([oidc_node, "provider.mjs"], cwd=OIDC_DIR, env=env,  # noqa: S603
                                   stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration", timeout=1):  # noqa: S310
                        break
                except (urllib.error.URLError, OSError):
                    if process.poll() is not None or time.monotonic() > deadline:
                        output.seek(0)
                        pytest.fail(f"the test OpenID provider did not start:\n{output.read().decode()[-3000:]}")
                    time.sleep(0.1)
            settings.OIDC_ISSUER, settings.OIDC_PROVIDER_NAME = issuer, PROVIDER_NAME
            settings.OIDC_RP_CLIENT_ID, settings.OIDC_RP_CLIENT_SECRET = CLIENT_ID, CLIENT_SECRET
            provider.forget_metadata()
            yield RunningProvider(issuer)
        finally:
            provider.forget_metadata()
            stop(process)


@pytest.fixture
def new_browser(browser: Browser, live_server: Any, csp_violations: list[dict[str, Any]],
                request: pytest.FixtureRequest) -> Iterator[Callable[[], Page]]:
    """A fresh browser context (nobody signed in) per call; CSP refusals fail the test."""
    contexts: list[BrowserContext] = []

    def open_page() -> Page:
        context = browser.new_context(base_url=live_server.url, viewport={"width": 1300, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        watch_csp(context, csp_violations)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


def _at_provider_sign_in(page: Page) -> None:
    expect(page.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()
    assert page.url.startswith("http://127.0.0.1:")  # the provider's own page, not the console's


def sso_sign_in(page: Page, username: str) -> None:
    """From the console's sign-in page, through the provider's form, back to the console."""
    page.goto("/login/")
    page.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").click()
    _at_provider_sign_in(page)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(ACCOUNTS[username]["password"])
    page.get_by_role("button", name="Sign in", exact=True).click()


def _roles(username: str) -> set[str]:
    user = OidcIdentity.objects.get(subject=ACCOUNTS[username]["sub"]).user
    return set(Membership.objects.filter(user=user, project__key=PROJECT).values_list("role", flat=True))


def _add_rule(admin: Page, group: str, role_label: str) -> None:
    form = admin.locator("form.card")  # the "Add a rule" card
    form.get_by_label("Group").fill(group)
    form.get_by_label("Role in this project").select_option(label=role_label)
    form.get_by_role("button", name="Add rule").click()
    expect(admin.get_by_test_id("sign-in-rule").filter(has=admin.locator(f'input[value="{group}"]'))).to_have_count(1)


def test_sso__rules_new_person_group_change_and_logout__through_the_real_provider(
        idp: RunningProvider, as_user: Callable[[str], Page], new_browser: Callable[[], Page]) -> None:
    # Given the project admin maps two of the provider's groups to roles, on the project's sign-in page
    admin = as_user("admin")
    admin.goto(f"/p/{PROJECT}/sign-in/")
    expect(admin.get_by_role("heading", name="Sign-in and roles from groups", level=1)).to_be_visible()
    _add_rule(admin, "support-ai-approvers", Role.APPROVER.label)
    _add_rule(admin, "support-ai-operators", Role.OPERATOR.label)
    review_screenshot(admin, "sso-rules.png")

    # When Dana (in support-ai-approvers and an unmapped group) signs in for the first time
    dana = new_browser()
    callbacks: list[str] = []
    dana.on("request", lambda r: callbacks.append(r.url) if "/sso/callback/" in r.url else None)
    sso_sign_in(dana, "dana")

    # Then she is in the console, under her name, with exactly the approver role
    expect(dana.get_by_role("heading", name="Your projects", level=1)).to_be_visible()
    expect(dana.locator(".who")).to_contain_text("Dana Scully")
    expect(dana.get_by_role("link", name="Support assistant")).to_be_visible()
    assert _roles("dana") == {Role.APPROVER}
    admin.reload()
    dana_row = admin.get_by_test_id("sign-in-member").filter(has_text="Dana Scully")
    expect(dana_row).to_contain_text(f"{Role.APPROVER.label} (from a group)")
    review_screenshot(admin, "sso-members.png")

    # When the same callback URL is opened again (a replayed state)
    (callback,) = callbacks
    dana.goto(callback)
    # Then it is refused with a clear page (she stays signed in from the first time, nothing more)
    expect(dana.get_by_role("heading", name="Sign-in refused")).to_be_visible()
    expect(dana.get_by_test_id("sign-in-refusal")).to_contain_text("already used")
    review_screenshot(dana, "sso-replayed-state.png")
    # ...and in another browser it signs nobody in
    thief = new_browser()
    thief.goto(callback)
    expect(thief.get_by_test_id("sign-in-refusal")).to_contain_text("already used")
    thief.goto(f"/p/{PROJECT}/")
    expect(thief.get_by_role("heading", name="Log in")).to_be_visible()

    # When she logs out of the console
    dana.goto("/")
    dana.get_by_role("button", name="Log out").click()
    # Then the provider asks to end its session too, and sends her back to the sign-in page
    expect(dana.get_by_role("heading", name="Sign out of the test identity provider?")).to_be_visible()
    dana.get_by_role("button", name="Yes, sign me out").click()
    expect(dana.get_by_role("heading", name="Log in")).to_be_visible()
    # ...so signing in again asks for her password again
    dana.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").click()
    _at_provider_sign_in(dana)

    # When the provider moves her from approvers to operators, and she signs in
    idp.set_groups("dana", ["support-ai-operators"])
    dana.get_by_label("Username").fill("dana")
    dana.get_by_label("Password").fill(ACCOUNTS["dana"]["password"])
    dana.get_by_role("button", name="Sign in", exact=True).click()
    expect(dana.get_by_role("heading", name="Your projects", level=1)).to_be_visible()

    # Then approver is revoked and operator granted, both by the identity provider
    assert _roles("dana") == {Role.OPERATOR}
    revoked = AuditEvent.objects.get(action="role.revoked", before__contains='"approver"')
    assert (revoked.actor_label, revoked.actor_kind) == (idp.actor_label, "system")
    assert "support-ai-approvers" in revoked.reason
    granted = AuditEvent.objects.filter(action="role.granted", target_label__startswith="dana-0001")
    assert {event.actor_label for event in granted} == {idp.actor_label}
    admin.reload()
    expect(admin.get_by_test_id("sign-in-member").filter(has_text="Dana Scully")).to_contain_text(
        f"{Role.OPERATOR.label} (from a group)")


def test_sso__refusals_through_the_real_provider__clear_pages_nobody_signed_in(
        idp: RunningProvider, new_browser: Callable[[], Page], live_server: Any) -> None:
    # The person cancels at the provider: it answers error=access_denied
    erin = new_browser()
    erin.goto("/login/")
    erin.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").click()
    _at_provider_sign_in(erin)
    erin.get_by_role("button", name="Cancel").click()
    expect(erin.get_by_role("heading", name="Sign-in refused")).to_be_visible()
    expect(erin.get_by_test_id("sign-in-refusal")).to_contain_text("declined at the identity provider")
    expect(erin.get_by_test_id("sign-in-refusal")).to_contain_text("The person cancelled the sign-in.")
    assert not OidcIdentity.objects.exists()

    # A token request without the PKCE verifier: the provider refuses it
    erin.get_by_role("link", name="Back to the sign-in page").click()
    erin.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").click()
    _at_provider_sign_in(erin)
    session_key = next(c["value"] for c in erin.context.cookies(live_server.url) if c["name"] == "sessionid")
    session = SessionStore(session_key=session_key)
    states = session["oidc_states"]
    assert states and all(pending["code_verifier"] for pending in states.values())  # the console keeps one...
    for pending in states.values():
        pending["code_verifier"] = None  # ...and here loses it
    session["oidc_states"] = states
    session.save()
    erin.get_by_label("Username").fill("erin")
    erin.get_by_label("Password").fill(ACCOUNTS["erin"]["password"])
    erin.get_by_role("button", name="Sign in", exact=True).click()
    expect(erin.get_by_role("heading", name="Sign-in refused")).to_be_visible()
    expect(erin.get_by_test_id("sign-in-refusal")).to_contain_text("refused to issue tokens: invalid_grant")
    review_screenshot(erin, "sso-missing-verifier.png")
    assert not OidcIdentity.objects.exists()
    assert AuditEvent.objects.filter(action="auth.login_failed", summary__contains="invalid_grant").count() == 1
    erin.goto(f"/p/{PROJECT}/")
    expect(erin.get_by_role("heading", name="Log in")).to_be_visible()

    # A clean try gets in, without the password this time: her session at the provider is still open
    erin.goto("/login/")
    erin.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").click()
    expect(erin.get_by_role("heading", name="Your projects", level=1)).to_be_visible()
    assert _roles("erin") == set()  # no rule maps her group in this test


def test_local_passwords_off__form_gone_post_refused_sso_still_works(
        idp: RunningProvider, new_browser: Callable[[], Page], settings: Any, demo: dict[str, Any]) -> None:
    settings.LOCAL_PASSWORDS = False
    page = new_browser()
    accept_dialogs(page)

    # The sign-in page offers the provider only
    page.goto("/login/")
    expect(page.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}")).to_be_visible()
    expect(page.get_by_label("Password")).to_have_count(0)
    review_screenshot(page, "sso-passwords-off.png")

    # A password posted anyway (right password, CSRF token and all) is refused, and nobody is signed in
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    for path in ("/login/", "/admin/login/"):
        response = page.request.post(path, form={"username": "admin", "password": demo["password"],
                                                 "csrfmiddlewaretoken": token})
        assert response.status == 403, path
        assert "turned off" in response.text()
    page.goto(f"/p/{PROJECT}/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()

    # The provider still signs people in
    sso_sign_in(page, "erin")
    expect(page.get_by_role("heading", name="Your projects", level=1)).to_be_visible()
