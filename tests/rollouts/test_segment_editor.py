"""The segment editor (rollouts/segment_views.py) on segments no governed environment uses:
creating and editing (saved, versioned, audited), refused when stale, and rules that would make
a segment refer to itself, directly or through another, refused beside the rules. Segments a
governed environment uses: tests/rollouts/test_segment_change_requests.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from audit.constants import AuditAction
from flags import services
from flags.models import Project, Segment
from tests.factories import TEST_ACTOR
from tests.flags.support import (
    PROJECT,
    assert_form_refused,
    audit_events_since,
    audit_mark,
    catalog_state,
    console_url,
)


@pytest.mark.django_db
def test_segment_create__valid__creates_segment_and_audits(
    client: Any, login: Callable[[str], Any], demo: Project
) -> None:
    # Given an editor
    owner = login("owner")
    mark = audit_mark()
    rules = [{"clauses": [{"attribute": "plan", "op": "equals", "values": ["enterprise"]}]}]
    # When a segment is created with keys and rules
    response = client.post(console_url("rollouts:segment_create"), {
        "key": "enterprise_accounts", "name": "Enterprise accounts", "description": "Big customers.",
        "included_keys": "acct-1, acct-2\nacct-3", "excluded_keys": "acct-9", "rules": json.dumps(rules),
    })
    # Then the browser returns to the segment list and the segment exists as typed
    assert response.status_code == 302
    assert response.url == console_url("segment_list")
    segment = Segment.objects.get(project=demo, key="enterprise_accounts")
    assert segment.name == "Enterprise accounts"
    assert segment.included_keys == ["acct-1", "acct-2", "acct-3"]
    assert segment.excluded_keys == ["acct-9"]
    assert segment.rules == rules
    # and it is audited
    events = audit_events_since(mark)
    assert [(e.action, e.actor, e.project_id) for e in events] == [(AuditAction.SEGMENT_CREATED, owner, demo.pk)]
    assert events[0].after["key"] == "enterprise_accounts"


@pytest.mark.django_db
def test_segment_edit__valid__saves_bumps_version_and_audits(client: Any, login: Callable[[str], Any]) -> None:
    # Given an editor and the beta segment
    owner = login("owner")
    segment = services.segment_create(project=Project.objects.get(key=PROJECT), key="qa_accounts", name="QA",
                                      included_keys=["acct-qa-1"], excluded_keys=["acct-beta-999"],
                                      rules=[{"clauses": [{"attribute": "plan", "op": "in", "values": ["qa"]}]}],
                                      actor=TEST_ACTOR)
    old_name, old_excluded, old_version = segment.name, segment.excluded_keys, segment.version
    mark = audit_mark()
    # When its name and excluded keys are changed, the rest submitted as shown
    response = client.post(console_url("rollouts:segment_edit", segment_key="qa_accounts"), {
        "name": "Beta programme accounts", "description": segment.description,
        "included_keys": "\n".join(segment.included_keys), "excluded_keys": "acct-beta-999\nacct-beta-998",
        "rules": json.dumps(segment.rules), "version": segment.version,
    })
    # Then it is saved one version up
    assert response.status_code == 302
    segment.refresh_from_db()
    assert segment.name == "Beta programme accounts"
    assert segment.excluded_keys == ["acct-beta-999", "acct-beta-998"]
    assert segment.version == old_version + 1
    # and the audit row holds exactly the changes
    events = audit_events_since(mark)
    assert [(e.action, e.actor) for e in events] == [(AuditAction.SEGMENT_UPDATED, owner)]
    assert events[0].before == {"name": old_name, "excluded_keys": old_excluded}
    assert events[0].after == {"name": "Beta programme accounts", "excluded_keys": ["acct-beta-999", "acct-beta-998"]}


@pytest.mark.django_db
def test_segment_edit__stale_version__refused_and_newer_change_kept(client: Any, login: Callable[[str], Any]) -> None:
    # Given an editor who opened the beta segment at its current version, and someone saving first
    login("owner")
    segment = services.segment_create(project=Project.objects.get(key=PROJECT), key="qa_accounts", name="QA",
                                      included_keys=["acct-qa-1"], excluded_keys=["acct-beta-999"],
                                      rules=[{"clauses": [{"attribute": "plan", "op": "in", "values": ["qa"]}]}],
                                      actor=TEST_ACTOR)
    opened_version = segment.version
    services.segment_update(segment=segment, actor=TEST_ACTOR, name="Renamed meanwhile")
    mark = audit_mark()
    # When the editor submits the form they opened
    response = client.post(console_url("rollouts:segment_edit", segment_key="qa_accounts"), {
        "name": "My rename", "description": "", "included_keys": "", "excluded_keys": "", "rules": "",
        "version": opened_version,
    })
    # Then it is refused with the reason, and the other change stands
    assert response.status_code == 422
    assert "changed this segment since you opened it" in response.content.decode()
    segment.refresh_from_db()
    assert segment.name == "Renamed meanwhile"
    assert audit_events_since(mark) == []


@pytest.mark.django_db
def test_segment_create__rule_referring_to_itself__is_refused_beside_rules(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor
    login("owner")
    before = catalog_state()
    # When a segment's rule names the segment itself
    response = client.post(console_url("rollouts:segment_create"), {
        "key": "loop_a", "name": "Loop A",
        "rules": json.dumps([{"clauses": [{"op": "in_segment", "values": ["loop_a"]}]}]),
    })
    # Then it is refused beside the rules, and nothing is saved
    assert_form_refused(response, "rules", "A segment cannot refer to itself.", catalog_before=before)


@pytest.mark.django_db
def test_segment_edit__cycle_through_another_segment__is_refused_beside_rules(
    client: Any, login: Callable[[str], Any], demo: Project
) -> None:
    # Given segment b refers to segment a
    services.segment_create(project=demo, key="seg_a", name="A", actor=TEST_ACTOR)
    services.segment_create(project=demo, key="seg_b", name="B", actor=TEST_ACTOR,
                            rules=[{"clauses": [{"op": "in_segment", "values": ["seg_a"]}]}])
    login("owner")
    before = catalog_state()
    # When a is edited to refer to b (a → b → a)
    response = client.post(console_url("rollouts:segment_edit", segment_key="seg_a"), {
        "name": "A", "rules": json.dumps([{"clauses": [{"op": "in_segment", "values": ["seg_b"]}]}]), "version": 1,
    })
    # Then the cycle is refused beside the rules, and a is unchanged
    assert_form_refused(response, "rules", "These rules make the segment refer to itself through other segments.",
                        catalog_before=before)
    assert Segment.objects.get(project=demo, key="seg_a").rules == []

