"""Flags in the catalog services (flags/services/catalog.py): creating and updating a flag's
contract validates, changes nothing on bad input, and records its audit row in the same
transaction."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from audit.models import AuditEvent
from flags import services
from flags.constants import BehaviorSurface, Lifetime, ValueType
from flags.models import Flag, Targeting, Variation
from tests.factories import TEST_ACTOR, make_json_flag, make_project, make_string_flag
from tests.flags.services.support import error_fields

pytestmark = pytest.mark.django_db


def test_flag_create__valid_contract__variations_off_targeting_and_audit_row() -> None:
    # Given a project with two environments
    project = make_project()
    # When a flag is created
    flag = make_string_flag(project)
    # Then it has its variations, its fallback, an off targeting per environment serving the fallback
    assert [v.key for v in flag.variations.all()] == ["none", "read_only", "write"]
    assert flag.fallback_variation.key == "none"
    targetings = list(flag.targetings.all())
    assert len(targetings) == 2
    assert all(not t.enabled and t.default_serve == {"variation": "none"} and t.version == 1 for t in targetings)
    # And one audit row, with the contract and variations as "after"
    event = AuditEvent.objects.get(action="flag.created")
    assert event.flag_id == flag.pk and event.project_id == project.pk
    assert event.actor_kind == "system" and event.actor_label == "system:tests"
    assert [v["key"] for v in event.after["variations"]] == ["none", "read_only", "write"]


def test_flag_create__duplicate_key__refused_and_nothing_saved() -> None:
    project = make_project()
    make_string_flag(project)
    events_before = AuditEvent.objects.count()
    with pytest.raises(ValidationError) as exc:
        make_string_flag(project)
    assert "key" in error_fields(exc)
    assert "already exists" in str(exc.value)
    assert Flag.objects.filter(project=project).count() == 1
    assert AuditEvent.objects.count() == events_before


@pytest.mark.parametrize("bad_key", ["tool mode", "ToolMode", "tool_Mode", "-leading", "", "a" * 101, "tool/mode"])
def test_flag_create__key_not_a_lowercase_slug__refused(bad_key: str) -> None:
    project = make_project()
    with pytest.raises(ValidationError) as exc:
        make_string_flag(project, key=bad_key)
    assert "key" in error_fields(exc)
    assert not Flag.objects.exists()
    assert not AuditEvent.objects.filter(action="flag.created").exists()


def test_flag_create__same_key_in_another_project__allowed() -> None:
    make_string_flag(make_project("one"))
    flag = make_string_flag(make_project("two"))
    assert flag.key == "tool_mode"


def test_flag_create__json_value_violates_schema__refused_with_path() -> None:
    project = make_project()
    with pytest.raises(ValidationError) as exc:
        services.flag_create(
            project=project, key="profile", name="Profile", behavior_surface=BehaviorSurface.AI_PROFILE,
            value_type=ValueType.JSON, lifetime=Lifetime.EXPERIMENT,
            json_schema={"type": "object", "properties": {"temperature": {"type": "number", "maximum": 2}}},
            variations=[{"key": "hot", "value": {"temperature": 9}}], fallback_variation_key="hot",
            actor=TEST_ACTOR,
        )
    assert "value" in error_fields(exc)
    assert "temperature" in str(exc.value)
    assert not Flag.objects.exists() and not Variation.objects.exists()


def test_flag_create__invalid_schema_document__refused() -> None:
    project = make_project()
    with pytest.raises(ValidationError) as exc:
        services.flag_create(
            project=project, key="profile", name="Profile", behavior_surface=BehaviorSurface.AI_PROFILE,
            value_type=ValueType.JSON, lifetime=Lifetime.EXPERIMENT, json_schema={"type": "no-such-type"},
            variations=[{"key": "a", "value": {}}], fallback_variation_key="a", actor=TEST_ACTOR,
        )
    assert "json_schema" in error_fields(exc)
    assert not Flag.objects.exists()


def test_flag_create__schema_on_string_flag__refused() -> None:
    project = make_project()
    with pytest.raises(ValidationError) as exc:
        make_string_flag(project, json_schema={"type": "string"})
    assert "json_schema" in error_fields(exc)


def test_flag_create__fallback_not_a_variation__refused_and_rolled_back() -> None:
    project = make_project()
    with pytest.raises(ValidationError) as exc:
        make_string_flag(project, fallback_variation_key="missing")
    assert "fallback_variation" in error_fields(exc)
    assert not Flag.objects.exists() and not Variation.objects.exists() and not Targeting.objects.exists()
    assert not AuditEvent.objects.filter(action="flag.created").exists()


def test_flag_update__contract_fields__audited_with_before_and_after() -> None:
    flag = make_string_flag(make_project())
    services.flag_update(flag=flag, actor=TEST_ACTOR, owner_team="support-ai", primary_metric="approval_rate",
                         tags=["agent", "Support"])
    flag.refresh_from_db()
    assert flag.owner_team == "support-ai" and flag.version == 2
    assert sorted(t.name for t in flag.tags.all()) == ["agent", "support"]
    event = AuditEvent.objects.get(action="flag.updated")
    assert event.before == {"owner_team": "platform", "primary_metric": "", "tags": []}
    assert event.after == {"owner_team": "support-ai", "primary_metric": "approval_rate", "tags": ["agent", "support"]}


def test_flag_update__key_or_value_type__cannot_be_changed() -> None:
    flag = make_string_flag(make_project())
    for field, value in (("key", "renamed"), ("value_type", ValueType.JSON)):
        with pytest.raises(ValidationError) as exc:
            services.flag_update(flag=flag, actor=TEST_ACTOR, **{field: value})
        assert field in error_fields(exc)
    flag.refresh_from_db()
    assert flag.key == "tool_mode" and flag.value_type == ValueType.STRING
    assert not AuditEvent.objects.filter(action="flag.updated").exists()


def test_flag_update__stale_version__refused() -> None:
    flag = make_string_flag(make_project())
    services.flag_update(flag=flag, actor=TEST_ACTOR, owner_team="a")
    with pytest.raises(services.ConflictError):
        services.flag_update(flag=flag, actor=TEST_ACTOR, expected_version=1, owner_team="b")
    flag.refresh_from_db()
    assert flag.owner_team == "a"


def test_flag_update__schema_that_rejects_an_existing_variation__refused() -> None:
    flag = make_json_flag(make_project())
    stricter = {"type": "object", "properties": {"temperature": {"type": "number", "maximum": 0.25}}}
    with pytest.raises(ValidationError) as exc:
        services.flag_update(flag=flag, actor=TEST_ACTOR, json_schema=stricter)
    assert "candidate" in str(exc.value)
    flag.refresh_from_db()
    assert flag.json_schema["properties"]["temperature"]["maximum"] == 2


def test_flag_update__no_change__writes_no_audit_row_and_keeps_version() -> None:
    flag = make_string_flag(make_project())
    services.flag_update(flag=flag, actor=TEST_ACTOR, name=flag.name)
    flag.refresh_from_db()
    assert flag.version == 1
    assert not AuditEvent.objects.filter(action="flag.updated").exists()


# --- the audit row shares the change's transaction -------------------------------------------


def test_flag_update__transaction_rolls_back__leaves_neither_change_nor_audit_row() -> None:
    flag = make_string_flag(make_project())

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        services.flag_update(flag=flag, actor=TEST_ACTOR, owner_team="will-roll-back")
        raise Boom
    flag.refresh_from_db()
    assert flag.owner_team == "platform"
    assert not AuditEvent.objects.filter(action="flag.updated").exists()

