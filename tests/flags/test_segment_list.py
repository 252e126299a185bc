"""The segments page: every segment with what uses it (as the service finds it), Edit for editors
everywhere and Delete only where nothing uses the segment, nothing for viewers and auditors,
the same number of queries however many segments; deleting an unused segment (audited), and
the deletes refused while something uses it (production included, forged posts too)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.constants import AuditAction
from flags import services
from flags.models import Environment, Project, Segment
from tests.factories import TEST_ACTOR
from tests.flags.support import (
    PROJECT,
    TOOL_MODE,
    audit_events_since,
    audit_mark,
    catalog_state,
    console_url,
    context_messages,
    demo_targeting,
)
from tests.rollouts.support import as_user, events_since, user

pytestmark = pytest.mark.django_db
SEGMENTS = f"/p/{PROJECT}/segments/"


# --- the list --------------------------------------------------------------------------------


def _delete_buttons(page: str) -> set[str]:
    return set(re.findall(rf'action="{SEGMENTS}([a-z0-9_]+)/delete/"', page))


def _edit_links(page: str) -> set[str]:
    return set(re.findall(rf'href="{SEGMENTS}([a-z0-9_]+)/">Edit</a>', page))


def test_segment_list__editor__edit_everywhere_delete_only_where_unused(client, demo) -> None:
    # Given the demo's two used segments and one nothing uses
    services.segment_create(project=demo, key="unused_accounts", name="Unused", actor=TEST_ACTOR)
    # When the owner opens the list
    page = as_user(client, "owner").get(SEGMENTS).content.decode()
    # Then every segment offers Edit, and Delete only the one segment_usages finds unused
    assert _edit_links(page) == {"beta_accounts", "internal_users", "unused_accounts"}
    unused = {s.key for s in Segment.objects.filter(project=demo) if not services.segment_usages(s)}
    assert _delete_buttons(page) == unused == {"unused_accounts"}
    # and each row says what uses it
    assert "support_agent_tool_mode in Production" in page


def test_segment_list__used_by__matches_segment_usages(client, demo) -> None:
    # Given a segment another segment refers to, and one used by development targeting only
    services.segment_create(project=demo, key="staff", name="Staff", actor=TEST_ACTOR,
                                 rules=[{"clauses": [{"op": "in_segment", "values": ["internal_users"]}]}])
    services.segment_create(project=demo, key="dev_only", name="Dev only", actor=TEST_ACTOR)
    development = Environment.objects.get(project=demo, key="development")
    targeting = development.targetings.get(flag__key="support_agent_tool_mode")
    services.targeting_update(targeting=targeting, actor=TEST_ACTOR, rules=[
        {"clauses": [{"op": "in_segment", "values": ["dev_only"]}], "serve": {"variation": "write"}}])
    # When the owner opens the list
    response = as_user(client, "owner").get(SEGMENTS)
    # Then each row's "used by" is what the service says
    rows = {row["segment"].key: set(row["used_by"]) for row in response.context["rows"]}
    assert rows == {s.key: set(services.segment_usages(s)) for s in Segment.objects.filter(project=demo)}
    assert "segment staff" in rows["internal_users"]
    assert _delete_buttons(response.content.decode()) == {"staff"}


@pytest.mark.parametrize("who", ["viewer", "auditor"])
def test_segment_list__viewer_or_auditor__neither_edit_nor_delete(client, demo, viewer, who) -> None:
    page = as_user(client, viewer if who == "viewer" else user(who)).get(SEGMENTS).content.decode()
    assert "internal_users" in page
    assert _edit_links(page) == set() and _delete_buttons(page) == set()
    assert "New segment" not in page


def test_segment_list__queries_do_not_grow_with_segments(client, demo) -> None:
    as_user(client, "owner")
    with CaptureQueriesContext(connection) as few:
        assert client.get(SEGMENTS).status_code == 200
    for n in range(5):
        services.segment_create(project=demo, key=f"extra_{n}", name=f"Extra {n}", actor=TEST_ACTOR,
                                     rules=[{"clauses": [{"op": "in_segment", "values": ["beta_accounts"]}]}])
    with CaptureQueriesContext(connection) as many:
        assert client.get(SEGMENTS).status_code == 200
    assert len(many.captured_queries) == len(few.captured_queries)


# --- deleting --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_segment_delete__unused__deletes_and_audits(client: Any, login: Callable[[str], Any], demo: Project) -> None:
    # Given a segment nothing refers to
    services.segment_create(project=demo, key="unused_segment", name="Unused", actor=TEST_ACTOR)
    owner = login("owner")
    mark = audit_mark()
    # When an editor deletes it
    response = client.post(console_url("segment_delete", segment_key="unused_segment"), follow=True)
    # Then it is gone, the list confirms, and the deletion is audited
    assert response.redirect_chain == [(console_url("segment_list"), 302)]
    assert context_messages(response) == ["Segment “unused_segment” deleted."]
    assert not Segment.objects.filter(project=demo, key="unused_segment").exists()
    events = audit_events_since(mark)
    assert [(e.action, e.actor) for e in events] == [(AuditAction.SEGMENT_DELETED, owner)]
    assert events[0].before["key"] == "unused_segment"


@pytest.mark.django_db
def test_segment_delete__used_by_targeting__is_refused_naming_the_usage(
    client: Any, login: Callable[[str], Any], demo: Project
) -> None:
    # Given a segment referenced by development targeting only
    services.segment_create(project=demo, key="dev_only", name="Dev only", actor=TEST_ACTOR)
    services.targeting_update(targeting=demo_targeting(TOOL_MODE, "development"), actor=TEST_ACTOR, rules=[
        {"clauses": [{"op": "in_segment", "values": ["dev_only"]}], "serve": {"variation": "write"}}])
    login("owner")
    before = catalog_state()
    # When an editor deletes it
    response = client.post(console_url("segment_delete", segment_key="dev_only"), follow=True)
    # Then the list says where it is used
    messages = context_messages(response)
    assert len(messages) == 1
    assert "Segment “dev_only” is used by" in messages[0] and f"{TOOL_MODE} in Development" in messages[0]
    # and the segment still exists
    assert Segment.objects.filter(project__key=PROJECT, key="dev_only").exists()
    assert catalog_state() == before


@pytest.mark.django_db
@pytest.mark.parametrize("segment_key", ["internal_users", "beta_accounts"])
def test_segment_used_by_production__delete__refused_with_the_reason(
    client: Any, login: Callable[[str], Any], segment_key: str
) -> None:
    # Given a segment that decides who production serves (editing it is a change request:
    # tests/rollouts/test_segment_change_requests.py)
    login("owner")
    before = catalog_state()
    # When an editor forges a delete
    delete = client.post(console_url("segment_delete", segment_key=segment_key))
    # Then it is refused with the reason, and nothing changed
    assert delete.status_code == 403 and "Production" in delete.content.decode()
    assert catalog_state() == before


def test_segment_delete__forged_post_on_segment_production_uses__403_nothing_deleted(client, demo) -> None:
    mark = audit_mark()
    response = as_user(client, "owner").post(f"{SEGMENTS}internal_users/delete/")
    assert response.status_code == 403
    assert "it cannot be deleted while it is used" in response.content.decode()
    assert Segment.objects.filter(project=demo, key="internal_users").exists()
    assert events_since(mark) == []

