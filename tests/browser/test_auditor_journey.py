"""The auditor's journey through the audit trail in a real browser: open it from the nav,
filter by flag and actor (htmx, URL pushed, no page load), expand a diff in place, download
the filtered trail as CSV (itself audited), and come Back to the filtered page; and a flag
owner, who is no auditor, neither sees nor opens the trail."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Locator, Page, expect

from audit.models import AuditEvent
from flags import services
from flags.models import Flag, Variation
from tests.browser.support import assert_no_full_page_load, set_page_marker
from tests.factories import as_approved

pytestmark = pytest.mark.browser

PROJECT = "support-assistant"
PROFILE_FLAG = "support_assistant_profile"
TOOL_FLAG = "support_agent_tool_mode"
OWNER_NAME = "Fatima Owner"
OWNER_LABEL = "Fatima Owner (owner)"  # the actor label snapshot kept on each audit row
CSV_HEADER = ("id", "created_at", "actor_label", "action")


# --- helpers -------------------------------------------------------------------------------


def audit_rows(page: Page) -> Locator:
    return page.get_by_test_id("audit-row")


def row_ids(page: Page) -> list[int]:
    """The event ids (the first cell) of the visible rows, top to bottom."""
    return [int(text.strip()) for text in audit_rows(page).locator("td:first-child").all_inner_texts()]


def user(username: str) -> Any:
    return get_user_model().objects.get(username=username)


def flag(key: str) -> Flag:
    return Flag.objects.get(project__key=PROJECT, key=key)


def make_history() -> None:
    """Changes by known users: the owner on both flags, the admin on the profile flag, so a
    filter on flag and actor together has something distinct to find."""
    owner, admin = user("owner"), user("admin")
    citation = Variation.objects.get(flag__project__key=PROJECT, flag__key=PROFILE_FLAG, key="citation_first_v4")
    assert citation.value["temperature"] == 0.2
    as_approved(lambda: services.variation_update(variation=citation, actor=owner,
                                                  reason="Warmer answers in the candidate",
                                                  value={**citation.value, "temperature": 0.3}))
    services.flag_update(flag=flag(PROFILE_FLAG), actor=owner, reason="Clarify the audience",
                         first_audience="Internal support team, then 10 % of beta accounts")
    services.flag_update(flag=flag(PROFILE_FLAG), actor=admin, reason="Ownership moved",
                         owner_team="support-ai-quality")
    services.flag_update(flag=flag(TOOL_FLAG), actor=owner, reason="Stricter review cadence",
                         cleanup_rule="Permanent permission gate: review monthly.")


def owner_profile_events() -> Any:
    """What the explorer should show for flag=support_assistant_profile, actor=owner: newest first."""
    return AuditEvent.objects.filter(flag_id=flag(PROFILE_FLAG).pk, actor_id=user("owner").pk).order_by("-id")


# --- journey: the auditor filters, reads a diff, exports, comes back --------------------------


def test_auditor_walk__filters_by_flag_and_actor_expands_diff_and_exports_csv__filtered_trail_downloaded_and_audited(
    login: Callable[[str], Page],
) -> None:
    # Given some history: the owner changed both flags, the admin changed the profile flag
    make_history()
    profile, owner, auditor = flag(PROFILE_FLAG), user("owner"), user("auditor")
    expected_ids = list(owner_profile_events().values_list("id", flat=True))
    assert len(expected_ids) == 2  # the variation edit and the contract edit
    assert AuditEvent.objects.filter(flag_id=profile.pk).exclude(actor_id=owner.pk).exists()
    assert AuditEvent.objects.filter(actor_id=owner.pk).exclude(flag_id=profile.pk).exists()

    # When the auditor logs in through the login form
    page = login("auditor")

    # Then the nav offers the audit trail, and it opens
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Audit trail").click()
    expect(page).to_have_url(re.compile(r"/audit/$"))
    expect(page.get_by_role("heading", name="Audit trail", level=1)).to_be_visible()
    expect(audit_rows(page).first).to_be_visible()

    # When they filter by the profile flag
    set_page_marker(page)
    page.get_by_label("Flag", exact=True).select_option(label=PROFILE_FLAG)

    # Then the table is swapped by htmx and the URL carries the flag
    expect(page).to_have_url(re.compile(rf"[?&]flag={profile.pk}(&|$)"))
    expect(audit_rows(page)).to_have_count(AuditEvent.objects.filter(flag_id=profile.pk).count())

    # When they also filter by the actor Fatima Owner
    page.get_by_label("Actor", exact=True).select_option(label=OWNER_NAME)

    # Then only the owner's events about that flag are listed, newest first, as in the database
    expect(page).to_have_url(re.compile(rf"[?&]actor={owner.pk}(&|$)"))
    expect(page).to_have_url(re.compile(rf"[?&]flag={profile.pk}(&|$)"))
    expect(audit_rows(page)).to_have_count(len(expected_ids))
    assert row_ids(page) == expected_ids
    for row in audit_rows(page).all():
        expect(row.locator("td").nth(2)).to_have_text(OWNER_LABEL)
    assert_no_full_page_load(page)

    # When they expand the changes of the variation.updated row
    event = owner_profile_events().get(action="variation.updated")
    row = audit_rows(page).filter(has=page.locator("code", has_text=re.compile(r"^variation\.updated$")))
    expect(row).to_have_count(1)
    changes = row.get_by_role("button", name="Changes")
    changes.click()

    # Then the diff appears in place, under that row, showing value.temperature 0.2 -> 0.3
    diff = page.locator(f"#detail-{event.pk}").get_by_test_id("audit-diff")
    expect(diff).to_be_visible()
    expect(changes).to_have_attribute("aria-expanded", "true")
    temperature = diff.locator("tbody tr").filter(has=page.locator("code", has_text=re.compile(r"^value\.temperature$")))
    expect(temperature).to_have_count(1)
    expect(temperature.locator("td").nth(1)).to_have_text("0.2")
    expect(temperature.locator("td").nth(2)).to_have_text("0.3")
    expect(page).to_have_url(re.compile(rf"[?&]actor={owner.pk}(&|$)"))
    assert_no_full_page_load(page)

    # When they download the CSV export (its link follows the filters applied by htmx)
    assert not AuditEvent.objects.filter(action="audit.exported").exists()
    export = page.get_by_role("link", name="Export CSV")
    expect(export).to_have_attribute("href", re.compile(rf"[?&]flag={profile.pk}(&|$)"))
    expect(export).to_have_attribute("href", re.compile(rf"[?&]actor={owner.pk}(&|$)"))
    with page.expect_download() as download_info:
        export.click()
    download = download_info.value
    assert download.failure() is None
    assert download.suggested_filename.endswith(".csv")
    text = Path(download.path()).read_text(encoding="utf-8")

    # Then it is CSV holding exactly the filtered events, newest first
    records = list(csv.reader(io.StringIO(text)))
    header, data = records[0], records[1:]
    assert set(CSV_HEADER) <= set(header)
    rows = [dict(zip(header, values, strict=True)) for values in data]
    assert [int(r["id"]) for r in rows] == expected_ids
    assert {r["actor_label"] for r in rows} == {OWNER_LABEL}
    assert {r["action"] for r in rows} == {"variation.updated", "flag.updated"}

    # And the export itself is on the record, by the auditor, with the filters it applied
    exported = AuditEvent.objects.get(action="audit.exported")
    assert exported.actor_id == auditor.pk
    assert exported.after == {"format": "csv", "filters": {"flag": str(profile.pk), "actor": str(owner.pk)}}

    # When they leave for the project list and press Back
    nav.get_by_role("link", name="Projects", exact=True).click()
    expect(page.get_by_role("heading", name="Your projects", level=1)).to_be_visible()
    page.go_back()

    # Then the whole filtered explorer page is back: heading, selected filters and rows
    expect(page).to_have_url(re.compile(rf"/audit/\?.*flag={profile.pk}"))
    expect(page).to_have_url(re.compile(rf"[?&]actor={owner.pk}(&|$)"))
    expect(page.get_by_role("heading", name="Audit trail", level=1)).to_be_visible()
    expect(nav.get_by_role("link", name="Audit trail")).to_be_visible()
    expect(page.get_by_label("Flag", exact=True)).to_have_value(str(profile.pk))
    expect(page.get_by_label("Actor", exact=True)).to_have_value(str(owner.pk))
    expect(audit_rows(page)).to_have_count(len(expected_ids))
    assert row_ids(page) == expected_ids


# --- the trail is not for everyone --------------------------------------------------------


def test_audit_trail__flag_owner_without_auditor_role__no_nav_link_and_not_allowed_403(
    login: Callable[[str], Page],
) -> None:
    # Given the flag owner (an editor, not an auditor) logged in
    page = login("owner")

    # Then the nav has no "Audit trail" link (while it does show the rest of the nav)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Projects", exact=True)).to_be_visible()
    expect(nav.get_by_role("link", name="Audit trail")).to_have_count(0)

    # When they open /audit/ directly
    response = page.goto("/audit/")

    # Then they get the "Not allowed" page with status 403, and no trail
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="Not allowed", level=1)).to_be_visible()
    expect(page.get_by_role("alert")).to_have_text("The audit trail is open to auditors and project admins.")
    expect(audit_rows(page)).to_have_count(0)


# --- account-level events: sign-ins belong to no project -----------------------------------


def test_auditor_walk__picks_account_events_after_a_failed_sign_in__row_shown_admin_sees_only_their_project(
    page: Page, login: Callable[[str], Page],
) -> None:
    # Given someone failed to sign in as the operator, through the login form
    page.goto("/login/")
    page.get_by_label("Username").fill("operator")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Please enter a correct username and password")).to_be_visible()
    failed = AuditEvent.objects.get(action="auth.login_failed")

    # When the auditor opens the audit trail and picks "Account events"
    login("auditor")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit trail").click()
    set_page_marker(page)
    page.get_by_label("Project", exact=True).select_option(label="Account events (sign-ins, accounts, exports)")

    # Then the table (swapped by htmx) holds the account-level rows only, the failed sign-in among them
    expect(page).to_have_url(re.compile(r"[?&]project=account(&|$)"))
    expect(audit_rows(page).filter(has_text="Failed sign-in as “operator”")).to_have_count(1)
    assert failed.pk in row_ids(page)
    expect(audit_rows(page).filter(has_text="Support assistant")).to_have_count(0)
    assert_no_full_page_load(page)

    # When they narrow it to the failed sign-ins by action
    page.get_by_label("Action", exact=True).select_option(value="auth.login_failed")

    # Then only that row is left
    expect(audit_rows(page)).to_have_count(1)
    assert row_ids(page) == [failed.pk]

    # When the project admin signs in instead and opens the trail
    page.context.clear_cookies()
    login("admin")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit trail").click()

    # Then it opens on their project's rows, without the account events
    expect(page.get_by_role("heading", name="Audit trail", level=1)).to_be_visible()
    expect(audit_rows(page).first).to_be_visible()
    expect(page.get_by_label("Project", exact=True).locator("option[value=account]")).to_have_count(0)
    expect(audit_rows(page).filter(has_text="Failed sign-in")).to_have_count(0)
