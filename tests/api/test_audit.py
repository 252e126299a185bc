"""The audit trail through the management API: the explorer's readers (auditors and project
admins; account-level rows for auditors only), its filters, one event with its changes, and the
export (CSV or JSON lines, itself audited), as the console's explorer and export."""

from __future__ import annotations

import csv
import datetime
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.test import Client
from django.utils import timezone

from audit.constants import ActorKind, AuditAction
from audit.export import EXPORT_FIELDS
from audit.models import AuditEvent
from flags import services as flag_services
from flags.constants import Role
from flags.models import AccessToken, Environment, Flag, Project, Segment
from tests.api.conftest import ApiClient
from tests.factories import TEST_ACTOR, grant, make_project
from tests.flags.support import audit_events_since, audit_mark

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

EVENTS = "/audit/events"
EXPORT = "/audit/export"
PROJECT = "support-assistant"


def walk(client: ApiClient, params: dict[str, Any] | None = None, limit: int = 40) -> list[dict[str, Any]]:
    """Every row the list answers for `params`, page after page."""
    items: list[dict[str, Any]] = []
    query = {**(params or {}), "limit": limit}
    while True:
        response = client.get(EVENTS, query)
        assert response.status_code == 200, response.content
        body = response.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        if body["next_cursor"] is None:
            return items
        query["cursor"] = body["next_cursor"]


def ids(items: list[dict[str, Any]]) -> list[int]:
    return [item["id"] for item in items]


def newest_first(events: Any) -> list[int]:
    return list(events.order_by("-id").values_list("id", flat=True))


def via_token(client: ApiClient, name: str) -> str:
    return f" via API token {name} ({client.token[:12]}…)"


def streamed(response: Any) -> str:
    return b"".join(response.streaming_content).decode()


def user(username: str) -> Any:
    return get_user_model().objects.get(username=username)


# --- who reads what ----------------------------------------------------------------------------

def test_audit_events__auditor__demo_and_account_rows_newest_first_every_row_once(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    # Given rows of another project too
    other = make_project("other")
    client = personal_api("auditor")
    # When the auditor walks the trail 10 rows at a time
    seen = ids(walk(client, limit=10))
    # Then every demo row and account-level row comes once, newest first, and nothing of the other project
    assert seen == newest_first(AuditEvent.objects.filter(Q(project_id=demo.pk) | Q(project_id__isnull=True)))
    assert len(seen) == len(set(seen)) > 10
    assert not AuditEvent.objects.filter(pk__in=seen, project_id=other.pk).exists()


def test_audit_events__project_admin__the_project_rows_but_no_account_rows(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    seen = ids(walk(personal_api("admin"), limit=7))
    assert seen == newest_first(AuditEvent.objects.filter(project_id=demo.pk))
    assert AuditEvent.objects.filter(project_id__isnull=True).exists()  # there were some to leave out


@pytest.mark.parametrize("username", ["owner", "pm", "operator"])
def test_audit_events__editor_approver_or_operator__403(demo: Project, personal_api: Callable[..., ApiClient],
                                                        username: str) -> None:
    response = personal_api(username).get(EVENTS)
    assert response.status_code == 403
    assert response.json()["detail"] == "The audit trail is open to auditors and project admins."


def test_audit_events__service_token_of_another_project__refused_and_as_its_auditor_no_demo_row(
        demo: Project, service_api: Callable[..., ApiClient]) -> None:
    # Given a read-only service token of another project (a viewer there)
    other = make_project("other")
    grant(other, user("admin"), Role.ADMIN)
    client = service_api(("read",), project=other)
    # Then it may not browse the trail at all
    assert client.get(EVENTS).status_code == 403
    # And when its account is made the other project's auditor, it reads that project's rows only
    account = AccessToken.objects.get(project=other).user
    grant(other, account, Role.AUDITOR)
    seen = walk(client, limit=200)
    assert seen and not [item for item in seen if item["project_id"] == demo.pk]
    assert {item["project_id"] for item in seen} <= {other.pk, None}
    assert client.get(EVENTS, {"project": PROJECT}).status_code == 404
    demo_row = AuditEvent.objects.filter(project_id=demo.pk).first()
    assert client.get(f"{EVENTS}/{demo_row.pk}").status_code == 404
    exported = streamed(client.get(EXPORT, {"format": "jsonl"}))
    assert [row for row in map(json.loads, exported.splitlines()) if row["project_id"] == demo.pk] == []


def test_audit_events__token_without_read_scope__403_insufficient_scope(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    response = personal_api("auditor", scopes=("write",)).get(EVENTS)
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"


# --- filters -----------------------------------------------------------------------------------

def test_audit_events__project_and_flag__that_flag_rows_only(demo: Project,
                                                             personal_api: Callable[..., ApiClient]) -> None:
    flag = Flag.objects.get(project=demo, key="support_agent_tool_mode")
    seen = ids(walk(personal_api("auditor"), {"project": PROJECT, "flag": flag.key}))
    assert seen and seen == newest_first(AuditEvent.objects.filter(flag_id=flag.pk))


def test_audit_events__project_and_environment__that_environment_rows_only(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    production = Environment.objects.get(project=demo, key="production")
    seen = ids(walk(personal_api("auditor"), {"project": PROJECT, "environment": "production"}))
    assert seen and seen == newest_first(AuditEvent.objects.filter(environment_id=production.pk))


def test_audit_events__action_actor_and_text__combine(demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    # Given two segments created: one by the owner through the API, one by a system job
    personal_api("owner").post(f"/projects/{PROJECT}/segments", {"key": "qa_accounts", "name": "QA"})
    flag_services.segment_create(project=demo, key="sys_accounts", name="Sys", actor=TEST_ACTOR)
    client = personal_api("auditor")
    # When the auditor asks for segment creations by the owner
    by_owner = walk(client, {"action": "segment.created", "actor": "owner"})
    # Then only the owner's comes
    assert [item["target_label"] for item in by_owner] == ["qa_accounts"]
    assert by_owner[0]["actor_id"] == user("owner").pk
    # And by system jobs: theirs, the demo's seed included
    by_system = walk(client, {"action": "segment.created", "actor": "system"})
    assert {item["actor_kind"] for item in by_system} == {ActorKind.SYSTEM}
    assert "sys_accounts" in [item["target_label"] for item in by_system]
    # And text in the summary or reason narrows further
    assert ids(walk(client, {"q": "sys_accounts", "actor": "system"})) == newest_first(
        AuditEvent.objects.filter(actor_kind=ActorKind.SYSTEM, summary__icontains="sys_accounts")
        | AuditEvent.objects.filter(actor_kind=ActorKind.SYSTEM, reason__icontains="sys_accounts"))
    # And an unknown username matches nothing
    assert walk(client, {"actor": "nobody-by-that-name"}) == []


def test_audit_events__account_scope__only_rows_of_no_project(demo: Project,
                                                              personal_api: Callable[..., ApiClient]) -> None:
    seen = walk(personal_api("auditor"), {"project": "account"})
    assert ids(seen) == newest_first(AuditEvent.objects.filter(project_id__isnull=True))
    assert walk(personal_api("admin"), {"project": "account"}) == []  # project admins do not see them


def test_audit_events__date_range__days_inclusive(demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    client = personal_api("auditor")
    today = timezone.localdate()
    tomorrow = today + datetime.timedelta(days=1)
    assert len(walk(client, {"from": today.isoformat(), "to": today.isoformat()})) == len(walk(client))
    assert walk(client, {"from": tomorrow.isoformat()}) == []
    assert walk(client, {"to": (today - datetime.timedelta(days=1)).isoformat()}) == []


@pytest.mark.parametrize(("params", "status"), [
    ({"environment": "production"}, 422),  # an environment needs its project
    ({"flag": "support_agent_tool_mode"}, 422),
    ({"action": "no.such_action"}, 422),
    ({"from": "yesterday"}, 422),
    ({"project": "Not a key"}, 422),
    ({"project": "nope"}, 404),
    ({"project": PROJECT, "flag": "nope"}, 404),
    ({"cursor": "garbage"}, 400),
    ({"limit": 0}, 422),
])
def test_audit_events__bad_filter__clear_problem(demo: Project, personal_api: Callable[..., ApiClient],
                                                 params: dict[str, Any], status: int) -> None:
    response = personal_api("auditor").get(EVENTS, params)
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"


def test_audit_events__project_the_reader_may_not_browse__404_as_if_missing(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    make_project("other")
    response = personal_api("auditor").get(EVENTS, {"project": "other"})
    assert response.status_code == 404
    assert response.json()["detail"] == "No such project in the audit trail you may read."


# --- one event ---------------------------------------------------------------------------------

def test_audit_event__auditor__the_row_with_its_field_changes(demo: Project,
                                                              personal_api: Callable[..., ApiClient]) -> None:
    segment = Segment.objects.get(project=demo, key="beta_accounts")
    mark = audit_mark()
    flag_services.segment_update(segment=segment, actor=TEST_ACTOR, name="Beta programme")
    (event,) = audit_events_since(mark)
    response = personal_api("auditor").get(f"{EVENTS}/{event.pk}")
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["action"], body["hash"], body["prev_hash"]) == (
        event.pk, AuditAction.SEGMENT_UPDATED, event.hash, event.prev_hash)
    assert body["changes"] == [{"path": "name", "before": "Beta accounts", "after": "Beta programme",
                                "kind": "changed"}]


def test_audit_event__editor__a_flag_row_as_its_history_tab_but_not_other_rows(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    client = personal_api("owner")
    flag_row = AuditEvent.objects.filter(project_id=demo.pk, flag_id__isnull=False).first()
    segment_row = AuditEvent.objects.filter(project_id=demo.pk, action=AuditAction.SEGMENT_CREATED).first()
    assert client.get(f"{EVENTS}/{flag_row.pk}").status_code == 200
    assert client.get(f"{EVENTS}/{segment_row.pk}").status_code == 404
    assert client.get(f"{EVENTS}/{AuditEvent.objects.order_by('-id').first().pk + 1000}").status_code == 404


# --- export ------------------------------------------------------------------------------------

def test_audit_export__csv__the_rows_the_list_shows_and_the_export_audited_naming_the_token(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    # Given the auditor, and what the list shows for segment creations in the demo
    client = personal_api("auditor")
    filters = {"project": PROJECT, "action": "segment.created"}
    listed = ids(walk(client, filters))
    mark = audit_mark()
    # When they export the same filter as CSV
    response = client.get(EXPORT, {**filters, "format": "csv"})
    # Then a CSV streams with the console's columns and the same rows
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    header, *rows = list(csv.reader(io.StringIO(streamed(response))))
    assert tuple(header) == EXPORT_FIELDS
    assert [int(row[0]) for row in rows] == listed
    # And the export is itself recorded, naming the token and the filter
    (event,) = audit_events_since(mark)
    assert (event.action, event.project_id) == (AuditAction.AUDIT_EXPORTED, demo.pk)
    assert event.after == {"format": "csv", "filters": filters}
    assert event.actor_label.endswith(via_token(client, "auditor test"))


def test_audit_export__jsonl__every_row_in_scope_up_to_the_export(demo: Project,
                                                                 personal_api: Callable[..., ApiClient]) -> None:
    client = personal_api("auditor")
    response = client.get(EXPORT, {"format": "jsonl"})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson; charset=utf-8"
    rows = [json.loads(line) for line in streamed(response).splitlines()]
    export = AuditEvent.objects.get(action=AuditAction.AUDIT_EXPORTED)
    in_scope = AuditEvent.objects.filter(Q(project_id=demo.pk) | Q(project_id__isnull=True), id__lt=export.pk)
    assert [row["id"] for row in rows] == newest_first(in_scope)
    assert set(rows[0]) == set(EXPORT_FIELDS)


@pytest.mark.parametrize("username", ["owner", "pm"])
def test_audit_export__not_an_auditor_or_admin__403_and_nothing_recorded(
        demo: Project, personal_api: Callable[..., ApiClient], username: str) -> None:
    client = personal_api(username)
    response = client.get(EXPORT, {"format": "csv"})
    assert response.status_code == 403
    assert not AuditEvent.objects.filter(action=AuditAction.AUDIT_EXPORTED).exists()


def test_audit_export__unknown_format__422_and_nothing_recorded(demo: Project,
                                                                personal_api: Callable[..., ApiClient]) -> None:
    assert personal_api("auditor").get(EXPORT, {"format": "xlsx"}).status_code == 422
    assert not AuditEvent.objects.filter(action=AuditAction.AUDIT_EXPORTED).exists()


def test_openapi__export__documents_csv_and_json_lines(demo: Project) -> None:
    schema = Client().get("/api/v1/openapi.json").json()
    content = schema["paths"]["/api/v1/audit/export"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"text/csv", "application/x-ndjson"}
