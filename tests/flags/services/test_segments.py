"""Segments in the catalog services (flags/services/segments.py): no rule that refers to the
segment itself, directly or through others; no delete while targeting uses it."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from flags import services
from flags.models import Segment
from tests.factories import TEST_ACTOR, make_project, make_string_flag
from tests.flags.services.support import error_fields, targeting_of

pytestmark = pytest.mark.django_db


def test_segment_create__rule_refers_to_itself__refused() -> None:
    project = make_project()
    with pytest.raises(ValidationError) as exc:
        services.segment_create(project=project, key="loop", name="Loop", actor=TEST_ACTOR,
                                rules=[{"clauses": [{"op": "in_segment", "values": ["loop"]}]}])
    assert "rules" in error_fields(exc)
    assert "itself" in str(exc.value)
    assert not Segment.objects.exists()


def test_segment_update__cycle_through_another_segment__refused() -> None:
    project = make_project()
    a = services.segment_create(project=project, key="a", name="A", actor=TEST_ACTOR)
    services.segment_create(project=project, key="b", name="B", actor=TEST_ACTOR,
                            rules=[{"clauses": [{"op": "in_segment", "values": ["a"]}]}])
    with pytest.raises(ValidationError) as exc:
        services.segment_update(segment=a, actor=TEST_ACTOR, rules=[{"clauses": [{"op": "in_segment", "values": ["b"]}]}])
    assert "itself through other segments" in str(exc.value)
    a.refresh_from_db()
    assert a.rules == []


def test_segment_delete__used_by_targeting__refused() -> None:
    project = make_project()
    segment = services.segment_create(project=project, key="beta", name="Beta", actor=TEST_ACTOR,
                                      included_keys=["acct-1", " acct-1 ", "acct-2"])
    assert segment.included_keys == ["acct-1", "acct-2"]
    flag = make_string_flag(project)
    services.targeting_update(targeting=targeting_of(flag), actor=TEST_ACTOR, rules=[
        {"clauses": [{"op": "in_segment", "values": ["beta"]}], "serve": {"variation": "read_only"}}])
    with pytest.raises(ValidationError) as exc:
        services.segment_delete(segment=segment, actor=TEST_ACTOR)
    assert "tool_mode in Development" in str(exc.value)
    assert Segment.objects.filter(key="beta").exists()

