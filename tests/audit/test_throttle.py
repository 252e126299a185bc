"""Sign-in throttling (audit/throttle.py, featureops_site/auth.py): per (account, address) with a
progressive delay, per address with a fixed window, in a cache that every process shares."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from audit import throttle
from audit.models import AuditEvent
from tests.servers import ROOT, database_url_from_settings, gunicorn

pytestmark = pytest.mark.django_db
PASSWORD = "pw-for-tests-1"  # make_user's
WRONG_PASSWORD = "Please enter a correct username and password"
REFUSED = "Too many failed sign-ins"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The throttle's clock, moved by hand: `clock[0] += seconds`."""
    now = [1_800_000_000.0]
    monkeypatch.setattr(throttle, "_now", lambda: now[0])
    return now


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    cache.clear()


def _sign_in(address: str, username: str, password: str) -> tuple[int, str]:
    response = Client(REMOTE_ADDR=address).post("/login/", {"username": username, "password": password})
    return response.status_code, response.content.decode()


def test_sign_in__attacker_address_fails_repeatedly__operator_signs_in_from_another_address(
        make_user: Any, clock: list[float], settings: Any) -> None:
    # Given an on-call operator, and an attacker who knows the name
    settings.LOGIN_FAILURES_PER_ACCOUNT = 5
    make_user("operator")
    # When the attacker fails five times, then even the right password from the attacker's address waits
    for _ in range(5):
        assert WRONG_PASSWORD in _sign_in("203.0.113.9", "operator", "guess")[1]
    status, page = _sign_in("203.0.113.9", "operator", PASSWORD)
    assert status == 200 and REFUSED in page
    assert AuditEvent.objects.filter(action="auth.login_throttled", actor_label="operator (not signed in)").count() == 1
    # Then the operator, elsewhere, signs in at once
    assert _sign_in("198.51.100.20", "operator", PASSWORD)[0] == 302
    assert _sign_in("2001:db8:77::5", "operator", PASSWORD)[0] == 302


def test_sign_in__failures_from_one_account_and_address__wait_doubles_and_the_refusal_says_how_long(
        make_user: Any, clock: list[float], settings: Any) -> None:
    settings.LOGIN_FAILURES_PER_ACCOUNT = 3
    settings.LOGIN_DELAY_BASE_SECONDS = 1
    settings.LOGIN_DELAY_MAX_SECONDS = 6
    make_user("operator")
    here = "192.0.2.44"
    # Given three failures
    for _ in range(3):
        assert WRONG_PASSWORD in _sign_in(here, "operator", "typo")[1]
    # Then each further try waits 1 s, 2 s, 4 s … after the last failure, capped at 6 s
    for wait in (1, 2, 4, 6, 6):
        status, page = _sign_in(here, "operator", PASSWORD)
        assert status == 200
        assert f"{REFUSED}. Try again in {wait} second{'s' if wait > 1 else ''}." in html.unescape(page)
        clock[0] += wait - 0.5
        assert "Try again in 1 second." in html.unescape(_sign_in(here, "operator", PASSWORD)[1])
        clock[0] += 0.5
        assert WRONG_PASSWORD in _sign_in(here, "operator", "typo")[1]
    assert AuditEvent.objects.filter(action="auth.login_throttled").count() == 10
    # When the wait is over, the right password signs in, and that forgets the failures
    clock[0] += 6
    assert _sign_in(here, "operator", PASSWORD)[0] == 302
    for _ in range(3):
        assert WRONG_PASSWORD in _sign_in(here, "operator", "typo")[1]
    assert "Try again in 1 second." in html.unescape(_sign_in(here, "operator", PASSWORD)[1])


def test_sign_in__many_accounts_from_one_ipv6_network__per_address_limit_refuses_and_says_how_long(
        make_user: Any, clock: list[float], settings: Any) -> None:
    settings.LOGIN_FAILURES_PER_ADDRESS = 4
    settings.LOGIN_THROTTLE_SECONDS = 15 * 60
    make_user("owner")
    # Given four failures for four accounts, from four addresses of one /64 (one client, usually)
    for n in range(4):
        assert WRONG_PASSWORD in _sign_in(f"2001:db8:1:2::{n + 1:x}", f"guess{n}", "x")[1]
    # Then that network is refused for the rest of the window, whatever the account
    assert "Try again in 15 minutes." in html.unescape(_sign_in("2001:db8:1:2:ffff::9", "owner", PASSWORD)[1])
    clock[0] += 10 * 60
    assert "Try again in 5 minutes." in html.unescape(_sign_in("2001:db8:1:2::1", "owner", PASSWORD)[1])
    # while other addresses are not
    assert _sign_in("2001:db8:1:3::1", "owner", PASSWORD)[0] == 302
    assert _sign_in("::ffff:192.0.2.1", "owner", PASSWORD)[0] == 302
    # and once the window is over, neither is it
    clock[0] += 5 * 60
    assert _sign_in("2001:db8:1:2::1", "owner", PASSWORD)[0] == 302


def test_sign_in__ipv4_mapped_address__counts_as_the_ipv4_address(clock: list[float], settings: Any) -> None:
    settings.LOGIN_FAILURES_PER_ADDRESS = 2
    _sign_in("192.0.2.8", "a", "x")
    _sign_in("::ffff:192.0.2.8", "b", "x")
    assert REFUSED in _sign_in("192.0.2.8", "c", "x")[1]


def test_sign_in__behind_a_trusted_proxy__each_client_is_throttled_by_its_own_address(
        make_user: Any, clock: list[float], settings: Any) -> None:
    # Given the console behind one reverse proxy (every request comes from 10.0.0.2)
    settings.TRUSTED_PROXY_COUNT = 1
    settings.LOGIN_FAILURES_PER_ACCOUNT = 3
    make_user("operator")

    def through_proxy(forwarded_for: str, password: str) -> int | str:
        response = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=forwarded_for).post(
            "/login/", {"username": "operator", "password": password})
        return response.status_code if response.status_code == 302 else response.content.decode()

    # When an attacker fails three times, forging a new first entry each time
    for n in range(3):
        assert WRONG_PASSWORD in through_proxy(f"198.18.0.{n}, 203.0.113.9", "guess")
    # Then the attacker waits, forged entries or not, while the operator behind the same proxy signs in
    assert REFUSED in through_proxy("198.18.0.99, 203.0.113.9", PASSWORD)
    assert through_proxy("198.51.100.20", PASSWORD) == 302


def test_login__repeated_failures_for_an_account__throttled_even_with_the_right_password(client, demo, settings) -> None:
    settings.LOGIN_FAILURES_PER_ACCOUNT = 3
    settings.LOGIN_DELAY_BASE_SECONDS = 60  # the first wait outlasts the test, however slow the machine
    from django.core.cache import cache

    cache.clear()
    for _ in range(3):
        assert client.post("/login/", {"username": "auditor", "password": "wrong"}).status_code == 200
    response = client.post("/login/", {"username": "auditor", "password": "featureops-demo"})
    assert response.status_code == 200 and "Too many failed sign-ins" in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action="auth.login_failed").count() == 3
    assert AuditEvent.objects.filter(action="auth.login_throttled", actor_label="auditor (not signed in)").exists()
    # Another account from elsewhere is unaffected
    other = client_for_address("10.9.9.9")
    assert other.post("/login/", {"username": "pm", "password": "featureops-demo"}).status_code == 302
    cache.clear()


def test_login__many_accounts_from_one_address__throttled_per_address(demo, settings) -> None:
    settings.LOGIN_FAILURES_PER_ADDRESS = 4
    from django.core.cache import cache

    cache.clear()
    attacker = client_for_address("203.0.113.5")
    for n in range(4):
        attacker.post("/login/", {"username": f"guess{n}", "password": "x"})
    response = attacker.post("/login/", {"username": "owner", "password": "featureops-demo"})
    assert "Too many failed sign-ins" in response.content.decode()
    assert client_for_address("198.51.100.7").post(
        "/login/", {"username": "owner", "password": "featureops-demo"}).status_code == 302
    cache.clear()


def test_throttle__compatibility_spelling_of_the_name__shares_the_counter(client, demo, settings) -> None:
    settings.LOGIN_FAILURES_PER_ACCOUNT = 2
    settings.LOGIN_DELAY_BASE_SECONDS = 60  # the first wait outlasts the test, however slow the machine
    cache.clear()
    for _ in range(2):
        client.post("/login/", {"username": "owner", "password": "wrong"})
    response = client.post("/login/", {"username": "\uff4fwner", "password": "featureops-demo"})  # fullwidth o
    assert "Too many failed sign-ins" in response.content.decode()
    assert "_auth_user_id" not in client.session
    cache.clear()


def client_for_address(address: str) -> Any:
    from django.test import Client

    return Client(REMOTE_ADDR=address)


# --- two processes, one counter ------------------------------------------------------------------

def _post_login(base: str, username: str, password: str) -> str:
    """A browser's sign-in: the form (for its CSRF cookie and token), then the POST."""
    with urllib.request.urlopen(base + "/login/", timeout=10) as response:  # noqa: S310
        form = response.read().decode()
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    body = urllib.parse.urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token})
    request = urllib.request.Request(base + "/login/", data=body.encode(), headers={"Cookie": cookie})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return html.unescape(response.read().decode())


def _five_failures_across_two_servers__sixth_refused(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The embedded default cache (no CACHE_URL); a long first wait, so that a slow machine
    # cannot let the sixth try through between the two servers.
    monkeypatch.delenv("CACHE_URL", raising=False)
    monkeypatch.setenv("LOGIN_FAILURES_PER_ACCOUNT", "5")
    monkeypatch.setenv("LOGIN_DELAY_BASE_SECONDS", "300")
    with gunicorn(database_url, workers=1, poll_seconds=0) as first, \
            gunicorn(database_url, workers=1, poll_seconds=0) as second:
        for base in (first, second, first, second, first):
            assert WRONG_PASSWORD in _post_login(base, "operator", "guess")
        assert "Too many failed sign-ins. Try again in 5 minutes." in _post_login(second, "operator", "guess")
        assert "Too many failed sign-ins. Try again in 5 minutes." in _post_login(first, "operator", "guess")


def test_sign_in__two_processes_on_the_embedded_defaults__share_one_counter(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a fresh SQLite database, migrated as `make run` does (that makes the cache table)
    database_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    env = {key: value for key, value in os.environ.items() if key != "CACHE_URL"}
    subprocess.run([sys.executable, "manage.py", "migrate", "--no-input", "-v0"], cwd=ROOT, check=True,
                   env={**env, "DATABASE_URL": database_url}, timeout=120)
    # Then five failures spread over two server processes are five, and the sixth is refused
    _five_failures_across_two_servers__sixth_refused(database_url, monkeypatch)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_sign_in__two_processes_on_postgresql_without_cache_url__share_one_counter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        _five_failures_across_two_servers__sixth_refused(database_url_from_settings(), monkeypatch)
    finally:
        cache.clear()  # the cache table is not a model: the flush after this test leaves it alone
