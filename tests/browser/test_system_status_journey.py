"""The platform admin notices a dead worker in Chromium: the navigation warns, the System status
page shows the silent worker in red, and refreshes itself (htmx, under the strict CSP) once a
worker consumes the queue again. Someone without the role sees neither."""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from featureops_site.services import worker_heartbeat_record

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

BAD_RED = "rgb(179, 38, 30)"  # --bad in app.css


def _heartbeat(hostname: str, queues: list[str], seconds_ago: float) -> None:
    now = timezone.now()
    worker_heartbeat_record(hostname=hostname, queues=queues, pid=31337, started_at=now - datetime.timedelta(hours=2),
                            now=now - datetime.timedelta(seconds=seconds_ago))


def test_system_status__safety_worker_dead__admin_warned_sees_it_red_then_recovered(
        login: Callable[[str], Any], settings: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    # Given a worker on telemetry, notifications and reminders seen 12 s ago, and the only
    # safety worker silent for 10 minutes
    settings.WORKER_STALE_SECONDS = 45
    _heartbeat("main@worker-1", ["telemetry", "notifications", "reminders"], seconds_ago=12)
    _heartbeat("safety@worker-2", ["safety"], seconds_ago=600)
    # When the project admin signs in
    page = login("admin")
    # Then the navigation warns, and leads to the System status page
    warning = page.get_by_test_id("nav-worker-warning")
    expect(warning).to_have_text("1 queue without a worker")
    page.get_by_role("link", name="System status").click()
    expect(page.get_by_role("heading", name="System status", level=1)).to_be_visible()
    expect(page.get_by_test_id("queues-without-worker")).to_contain_text("No live worker for: safety")
    # with safety's worker stale, in red, and the live one green
    stale = page.locator('[data-testid="worker"][data-state="stale"]')
    expect(stale).to_contain_text("safety@worker-2")
    expect(stale.get_by_test_id("last-seen")).to_have_text("10 min ago")
    assert stale.get_by_test_id("last-seen").evaluate("e => getComputedStyle(e).color") == BAD_RED
    live = page.locator('[data-testid="worker"][data-state="live"]')
    expect(live.get_by_test_id("last-seen")).to_have_text(re.compile(r"^1\d s ago$"))  # 12 s, plus the sign-in
    expect(page.get_by_test_id("queue-safety")).to_contain_text("no live worker")
    page.screenshot(path=str(tmp_path / "system-status.png"), full_page=True)

    # When a worker consumes safety again, the page updates by itself (every 10 s)
    _heartbeat("safety@worker-3", ["safety"], seconds_ago=0)
    expect(page.get_by_test_id("queue-safety")).to_contain_text("1 live", timeout=15_000)
    expect(page.get_by_test_id("queues-without-worker")).to_have_count(0)


def test_system_status__operator__no_link_and_refused(login: Callable[[str], Any]) -> None:
    from playwright.sync_api import expect

    _heartbeat("main@worker-1", ["telemetry"], seconds_ago=1)
    page = login("operator")
    expect(page.get_by_role("link", name="System status")).to_have_count(0)
    response = page.goto("/system/")
    assert response is not None and response.status == 403
    expect(page.get_by_role("alert")).to_have_text("System status is for site staff and project admins.")
