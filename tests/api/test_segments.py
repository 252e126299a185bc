"""Segments through the management API: the console's rules (EDIT_SEGMENTS, DELETE_SEGMENTS) and
services, change control on an edit that widens who production serves, ETag / If-Match, and
cursor pages.

The demo segment internal_users is used by production's rules of support_agent_tool_mode
(serving approval_required to it, read_only to everyone else) and support_assistant_profile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.constants import AuditAction
from audit.models import AuditEvent
from flags import services as flag_services
from flags.constants import Role
from flags.evaluation.engine import compile_snapshot, evaluate
from flags.models import Environment, Project, Segment
from flags.snapshot_builder import build_environment_snapshot
from rollouts.models import ChangeRequest
from tests.api.conftest import ApiClient
from tests.factories import TEST_ACTOR, grant, make_project
from tests.flags.support import audit_events_since, audit_mark

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

PROJECT = "support-assistant"
SEGMENTS = f"/projects/{PROJECT}/segments"
EVERYONE = [{"clauses": [{"attribute": "accountId", "op": "matches", "values": [".*"]}]}]


def via_token(client: ApiClient, name: str) -> str:
    """The end of an audit row's actor label when the change came through `client`'s token."""
    return f" via API token {name} ({client.token[:12]}…)"


def served_in_production(flag_key: str, context: dict[str, Any]) -> str | None:
    production = Environment.objects.get(project__key=PROJECT, key="production")
    return evaluate(compile_snapshot(build_environment_snapshot(production.pk)), flag_key, context).variant


def other_project_service_api(service_api: Callable[..., ApiClient]) -> ApiClient:
    """A read-and-write service token of another project (its admin is the demo's admin)."""
    other = make_project("other")
    grant(other, get_user_model().objects.get(username="admin"), Role.ADMIN)
    return service_api(("read", "write"), project=other)


# --- reading -----------------------------------------------------------------------------------

def test_segment_list__pages_of_two__every_segment_once_in_key_order_with_its_usages(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    # Given three more segments, one referring to internal_users
    for key in ("a_first", "m_middle", "z_last"):
        flag_services.segment_create(project=demo, key=key, name=key, actor=TEST_ACTOR)
    flag_services.segment_update(segment=Segment.objects.get(project=demo, key="m_middle"), actor=TEST_ACTOR,
                                 rules=[{"clauses": [{"attribute": "accountId", "op": "in_segment",
                                                      "values": ["internal_users"]}]}])
    client = personal_api("pm")
    # When a viewer walks the list two at a time
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        response = client.get(SEGMENTS, {"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200
        body = response.json()
        assert len(body["items"]) <= 2
        seen += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    # Then every segment comes once, by key, each with where the service says it is used
    keys = [item["key"] for item in seen]
    assert keys == sorted(Segment.objects.filter(project=demo).values_list("key", flat=True))
    for item in seen:
        usages = flag_services.segment_usages(Segment.objects.get(project=demo, key=item["key"]))
        assert sorted(item["used_by"]) == sorted(usages)
    assert "segment m_middle" in next(item for item in seen if item["key"] == "internal_users")["used_by"]


def test_segment_list__more_segments_on_the_page__same_number_of_queries(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    # Given six segments, and a client that has already made its first request
    for key in ("s1", "s2", "s3", "s4"):
        flag_services.segment_create(project=demo, key=key, name=key, actor=TEST_ACTOR)
    client = personal_api("pm")
    client.get(SEGMENTS)
    # When a page of two and a page of six are read
    with CaptureQueriesContext(connection) as two:
        assert client.get(SEGMENTS, {"limit": 2}).status_code == 200
    with CaptureQueriesContext(connection) as six:
        assert len(client.get(SEGMENTS, {"limit": 6}).json()["items"]) == 6
    # Then the bigger page costs no query more
    assert len(six) == len(two)


def test_segment_get__existing__etag_is_its_version(demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    segment = Segment.objects.get(project=demo, key="beta_accounts")
    response = personal_api("pm").get(f"{SEGMENTS}/beta_accounts")
    assert response.status_code == 200
    assert response["ETag"] == f'"v{segment.version}"'
    body = response.json()
    assert (body["included_keys"], body["excluded_keys"], body["rules"]) == (
        segment.included_keys, segment.excluded_keys, segment.rules)


def test_segment_get__unknown_key__404_problem(demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    response = personal_api("pm").get(f"{SEGMENTS}/nope")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["detail"] == "No such segment."


# --- creating ----------------------------------------------------------------------------------

def test_segment_create__editor_token__201_created_and_audited_naming_the_token(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    # Given the owner (an editor) with a personal token
    client = personal_api("owner")
    mark = audit_mark()
    # When they create a segment
    response = client.post(SEGMENTS, {"key": "qa_accounts", "name": "QA accounts", "included_keys": ["acct-qa-1"]})
    # Then it exists, answered with its ETag, and the audit row names the token
    assert response.status_code == 201
    segment = Segment.objects.get(project=demo, key="qa_accounts")
    assert segment.included_keys == ["acct-qa-1"]
    assert response["ETag"] == f'"v{segment.version}"'
    assert response.json()["used_by"] == []
    (event,) = audit_events_since(mark, action=AuditAction.SEGMENT_CREATED)
    assert event.target_label == "qa_accounts" and event.project_id == demo.pk
    assert event.actor_label.endswith(via_token(client, "owner test"))


def test_segment_create__viewer__403_and_nothing_created(demo: Project, viewer: Any,
                                                         personal_api: Callable[..., ApiClient]) -> None:
    client = personal_api(viewer.username)
    mark = audit_mark()
    response = client.post(SEGMENTS, {"key": "qa_accounts", "name": "QA"})
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert not Segment.objects.filter(key="qa_accounts").exists()
    assert audit_events_since(mark) == []


def test_segment_create__read_only_token_of_an_editor__403_insufficient_scope(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    response = personal_api("owner", scopes=("read",)).post(SEGMENTS, {"key": "qa_accounts", "name": "QA"})
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
    assert not Segment.objects.filter(key="qa_accounts").exists()


@pytest.mark.parametrize(("body", "path"), [
    ({"key": "qa", "name": "QA", "rules": [{"clauses": [{"attribute": "plan", "op": "in_segment",
                                                          "values": ["unknown"]}]}]}, "rules"),
    ({"key": "internal_users", "name": "Again"}, "key"),
    ({"key": "qa", "name": "QA\x00"}, "name"),
    ({"key": "Not A Slug", "name": "QA"}, "key"),
])
def test_segment_create__invalid__422_naming_the_field(demo: Project, personal_api: Callable[..., ApiClient],
                                                       body: dict[str, Any], path: str) -> None:
    count = Segment.objects.count()
    response = personal_api("owner").post(SEGMENTS, body)
    assert response.status_code == 422
    assert path in [error["path"] for error in response.json()["errors"]]
    assert Segment.objects.count() == count


# --- editing -----------------------------------------------------------------------------------

def test_segment_patch__segment_nothing_governed_uses__200_applied_and_audited(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    # Given a segment no targeting uses, at version 1
    flag_services.segment_create(project=demo, key="qa_accounts", name="QA", actor=TEST_ACTOR)
    client = personal_api("owner")
    mark = audit_mark()
    # When the owner adds a key, naming the version they read
    response = client.patch(f"{SEGMENTS}/qa_accounts", {"included_keys": ["acct-qa-1"]}, headers={"If-Match": '"v1"'})
    # Then it is saved at once, the ETag moves on, and the audit row names the token
    assert response.status_code == 200
    segment = Segment.objects.get(project=demo, key="qa_accounts")
    assert (segment.included_keys, segment.version) == (["acct-qa-1"], 2)
    assert response["ETag"] == '"v2"'
    (event,) = audit_events_since(mark, action=AuditAction.SEGMENT_UPDATED)
    assert event.after == {"included_keys": ["acct-qa-1"]}
    assert event.actor_label.endswith(via_token(client, "owner test"))


def test_segment_patch__stale_if_match__412_and_unchanged(demo: Project,
                                                          personal_api: Callable[..., ApiClient]) -> None:
    # Given a segment someone changed after the client read version 1
    segment = flag_services.segment_create(project=demo, key="qa_accounts", name="QA", actor=TEST_ACTOR)
    flag_services.segment_update(segment=segment, actor=TEST_ACTOR, name="QA team")
    client = personal_api("owner")
    mark = audit_mark()
    # When the client sends its edit with If-Match of version 1
    response = client.patch(f"{SEGMENTS}/qa_accounts", {"name": "Quality"},
                                           headers={"If-Match": '"v1"'})
    # Then it is refused as stale and nothing changes
    assert response.status_code == 412
    assert response.json()["code"] == "stale_version"
    assert Segment.objects.get(pk=segment.pk).name == "QA team"
    assert audit_events_since(mark) == []


def test_segment_patch__widens_a_segment_production_uses_to_everyone__202_change_request_and_serving_unchanged(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    # Given internal_users, which production's tool-mode rules serve approval_required, and
    # someone outside it, served read_only there
    outsider = {"accountId": "acct-random-777", "email": "someone@example.org"}
    assert served_in_production("support_agent_tool_mode", outsider) == "read_only"
    before = Segment.objects.get(project=demo, key="internal_users")
    client = personal_api("owner")
    mark = audit_mark()
    # When the owner widens it to match every account
    response = client.patch(f"{SEGMENTS}/internal_users", {"rules": EVERYONE, "reason": "Everyone is internal now"})
    # Then a change request waits for approval, and the segment and production are as they were
    assert response.status_code == 202
    change_request = ChangeRequest.objects.get()
    assert response.json()["id"] == change_request.pk
    assert (change_request.kind, change_request.status, change_request.segment_id) == (
        ChangeRequest.Kind.SEGMENT, ChangeRequest.Status.PENDING, before.pk)
    assert change_request.proposed["rules"] == EVERYONE
    after = Segment.objects.get(pk=before.pk)
    assert (after.version, after.rules) == (before.version, before.rules)
    assert served_in_production("support_agent_tool_mode", outsider) == "read_only"
    assert not audit_events_since(mark, action=AuditAction.SEGMENT_UPDATED)
    opened = [event for event in audit_events_since(mark) if event.change_request_id == change_request.pk
              or event.target_id == str(change_request.pk)]
    assert opened and all(event.actor_label.endswith(via_token(client, "owner test")) for event in opened)


def test_segment_patch__widening_without_a_reason__422_on_reason_and_nothing_opened(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    response = personal_api("owner").patch(f"{SEGMENTS}/internal_users", {"rules": EVERYONE})
    assert response.status_code == 422
    assert "reason" in [error["path"] for error in response.json()["errors"]]
    assert not ChangeRequest.objects.exists()


def test_segment_patch__null_or_nothing_to_change__422(demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    client = personal_api("owner")
    assert client.patch(f"{SEGMENTS}/beta_accounts", {"name": None}).status_code == 422
    assert client.patch(f"{SEGMENTS}/beta_accounts", {"reason": "nothing"}).status_code == 422


def test_segment_patch__viewer__403(demo: Project, viewer: Any, personal_api: Callable[..., ApiClient]) -> None:
    response = personal_api(viewer.username).patch(f"{SEGMENTS}/beta_accounts", {"name": "Beta"})
    assert response.status_code == 403
    assert Segment.objects.get(project=demo, key="beta_accounts").name == "Beta accounts"


# --- deleting ----------------------------------------------------------------------------------

def test_segment_delete__unused__204_deleted_and_audited(demo: Project,
                                                         personal_api: Callable[..., ApiClient]) -> None:
    flag_services.segment_create(project=demo, key="qa_accounts", name="QA", actor=TEST_ACTOR)
    client = personal_api("owner")
    mark = audit_mark()
    response = client.delete(f"{SEGMENTS}/qa_accounts")
    assert response.status_code == 204
    assert not Segment.objects.filter(key="qa_accounts").exists()
    (event,) = audit_events_since(mark, action=AuditAction.SEGMENT_DELETED)
    assert event.actor_label.endswith(via_token(client, "owner test"))


def test_segment_delete__used_by_targeting__409_naming_where_and_kept(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    client = personal_api("owner")
    mark = audit_mark()
    response = client.delete(f"{SEGMENTS}/internal_users")
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "segment_in_use"
    assert "support_agent_tool_mode in Production" in body["detail"]
    assert Segment.objects.filter(project=demo, key="internal_users").exists()
    assert audit_events_since(mark) == []


def test_segment_delete__viewer__403(demo: Project, viewer: Any, personal_api: Callable[..., ApiClient]) -> None:
    flag_services.segment_create(project=demo, key="qa_accounts", name="QA", actor=TEST_ACTOR)
    response = personal_api(viewer.username).delete(f"{SEGMENTS}/qa_accounts")
    assert response.status_code == 403
    assert Segment.objects.filter(key="qa_accounts").exists()


# --- another project's token -------------------------------------------------------------------

def test_segments__service_token_of_another_project__404_on_every_operation(
        demo: Project, service_api: Callable[..., ApiClient]) -> None:
    # Given a read-and-write service token of another project
    client = other_project_service_api(service_api)
    mark = audit_mark()
    # When it reaches for the demo project's segments
    answers = [client.get(SEGMENTS), client.get(f"{SEGMENTS}/beta_accounts"),
               client.post(SEGMENTS, {"key": "qa", "name": "QA"}),
               client.patch(f"{SEGMENTS}/beta_accounts", {"name": "Mine"}), client.delete(f"{SEGMENTS}/beta_accounts")]
    # Then the project does not exist for it, and nothing changed
    assert [response.status_code for response in answers] == [404] * 5
    assert Segment.objects.get(project=demo, key="beta_accounts").name == "Beta accounts"
    assert not AuditEvent.objects.filter(id__gt=mark, project_id=demo.pk).exists()
