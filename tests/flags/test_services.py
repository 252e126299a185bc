"""Catalog services: every write validates, changes nothing on bad input, and records its
audit row in the same transaction."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from audit.models import AuditEvent
from flags import services
from flags.constants import BehaviorSurface, Lifetime, ValueType
from flags.models import Environment, Flag, Segment, Targeting, Variation
from tests.factories import (
    TEST_ACTOR,
    make_boolean_flag,
    make_json_flag,
    make_project,
    make_string_flag,
)

pytestmark = pytest.mark.django_db


def _targeting(flag: Flag, environment_key: str = "development") -> Targeting:
    return Targeting.objects.get(flag=flag, environment__key=environment_key)


def _error_fields(exc: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return set(exc.value.error_dict) if hasattr(exc.value, "error_dict") else set()


# --- flags ---------------------------------------------------------------------------------


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
    assert "key" in _error_fields(exc)
    assert "already exists" in str(exc.value)
    assert Flag.objects.filter(project=project).count() == 1
    assert AuditEvent.objects.count() == events_before


@pytest.mark.parametrize("bad_key", ["tool mode", "ToolMode", "tool_Mode", "-leading", "", "a" * 101, "tool/mode"])
def test_flag_create__key_not_a_lowercase_slug__refused(bad_key: str) -> None:
    project = make_project()
    with pytest.raises(ValidationError) as exc:
        make_string_flag(project, key=bad_key)
    assert "key" in _error_fields(exc)
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
    assert "value" in _error_fields(exc)
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
    assert "json_schema" in _error_fields(exc)
    assert not Flag.objects.exists()


def test_flag_create__schema_on_string_flag__refused() -> None:
    project = make_project()
    with pytest.raises(ValidationError) as exc:
        make_string_flag(project, json_schema={"type": "string"})
    assert "json_schema" in _error_fields(exc)


def test_flag_create__fallback_not_a_variation__refused_and_rolled_back() -> None:
    project = make_project()
    with pytest.raises(ValidationError) as exc:
        make_string_flag(project, fallback_variation_key="missing")
    assert "fallback_variation" in _error_fields(exc)
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
        assert field in _error_fields(exc)
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


# --- variations ----------------------------------------------------------------------------


def test_variation_create__string_value_on_boolean_flag__refused() -> None:
    flag = make_boolean_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.variation_create(flag=flag, key="maybe", value="true", actor=TEST_ACTOR)
    assert "value" in _error_fields(exc)
    assert "boolean" in str(exc.value)
    assert flag.variations.count() == 2


@pytest.mark.parametrize("value", [1, "1", None, [True]])
def test_variation_create__non_boolean_values_on_boolean_flag__refused(value: object) -> None:
    flag = make_boolean_flag(make_project())
    with pytest.raises(ValidationError):
        services.variation_create(flag=flag, key="other", value=value, actor=TEST_ACTOR)
    assert flag.variations.count() == 2


@pytest.mark.parametrize("value", [True, "3", None, float("nan")])
def test_variation_create__non_numbers_on_number_flag__refused(value: object) -> None:
    project = make_project()
    flag = services.flag_create(
        project=project, key="budget", name="Token budget", behavior_surface=BehaviorSurface.SAMPLING_PARAMETERS,
        value_type=ValueType.NUMBER, lifetime=Lifetime.OPERATIONAL, variations=[{"key": "small", "value": 500}],
        fallback_variation_key="small", actor=TEST_ACTOR,
    )
    with pytest.raises(ValidationError):
        services.variation_create(flag=flag, key="other", value=value, actor=TEST_ACTOR)
    assert flag.variations.count() == 1


def test_variation_create__duplicate_key__refused() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.variation_create(flag=flag, key="write", value="write", actor=TEST_ACTOR)
    assert "key" in _error_fields(exc)
    assert flag.variations.filter(key="write").count() == 1


def test_variation_update__value_violating_schema__refused_and_value_kept() -> None:
    flag = make_json_flag(make_project())
    candidate = flag.variations.get(key="candidate")
    with pytest.raises(ValidationError) as exc:
        services.variation_update(variation=candidate, actor=TEST_ACTOR, value={"prompt": "v4", "temperature": 9})
    assert "value" in _error_fields(exc)
    candidate.refresh_from_db()
    assert candidate.value == {"prompt": "v4", "temperature": 0.3}
    assert not AuditEvent.objects.filter(action="variation.updated").exists()


def test_variation_update__valid_value__saved_bumps_environments_and_audited() -> None:
    flag = make_json_flag(make_project())
    versions_before = dict(Environment.objects.values_list("key", "version"))
    candidate = flag.variations.get(key="candidate")
    services.variation_update(variation=candidate, actor=TEST_ACTOR, value={"prompt": "v5", "temperature": 0.3})
    candidate.refresh_from_db()
    assert candidate.value["prompt"] == "v5"
    versions_after = dict(Environment.objects.values_list("key", "version"))
    assert all(versions_after[k] == versions_before[k] + 1 for k in versions_before)
    event = AuditEvent.objects.get(action="variation.updated")
    assert event.before == {"value": {"prompt": "v4", "temperature": 0.3}}
    assert event.after == {"value": {"prompt": "v5", "temperature": 0.3}}


def test_variation_update__key__cannot_be_changed() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.variation_update(variation=flag.variations.get(key="write"), actor=TEST_ACTOR, key="admin")
    assert "key" in _error_fields(exc)


def test_variation_delete__referenced_by_targeting__refused_naming_where() -> None:
    flag = make_string_flag(make_project())
    services.targeting_update(targeting=_targeting(flag), actor=TEST_ACTOR,
                              rules=[{"clauses": [{"attribute": "plan", "op": "equals", "values": ["pro"]}],
                                      "serve": {"variation": "write"}}])
    with pytest.raises(ValidationError) as exc:
        services.variation_delete(variation=flag.variations.get(key="write"), actor=TEST_ACTOR)
    assert "Development: a rule" in str(exc.value)
    assert flag.variations.filter(key="write").exists()
    assert not AuditEvent.objects.filter(action="variation.deleted").exists()


def test_variation_delete__fallback__refused() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.variation_delete(variation=flag.variations.get(key="none"), actor=TEST_ACTOR)
    assert "fallback" in str(exc.value)
    assert flag.variations.filter(key="none").exists()


def test_variation_delete__unused__deleted_and_audited() -> None:
    flag = make_string_flag(make_project())
    services.variation_delete(variation=flag.variations.get(key="write"), actor=TEST_ACTOR)
    assert not flag.variations.filter(key="write").exists()
    event = AuditEvent.objects.get(action="variation.deleted")
    assert event.before["key"] == "write" and event.target_label.endswith("write")


# --- targeting -----------------------------------------------------------------------------


def test_targeting_update__rules_split_and_targets__saved_versioned_and_audited() -> None:
    flag = make_string_flag(make_project())
    targeting = _targeting(flag)
    environment_version = targeting.environment.version
    services.targeting_update(
        targeting=targeting, actor=TEST_ACTOR, enabled=True, assignment_unit="accountId",
        targets=[{"variation": "write", "values": ["acct-1"]}],
        rules=[{"id": "beta", "clauses": [{"attribute": "plan", "op": "in", "values": ["beta"], "negate": False}],
                "serve": {"split": [{"variation": "none", "weight": 95_000}, {"variation": "read_only", "weight": 5_000}]}}],
        default_serve={"variation": "read_only"},
    )
    targeting.refresh_from_db()
    assert targeting.version == 2 and targeting.enabled
    assert Environment.objects.get(pk=targeting.environment_id).version == environment_version + 1
    event = AuditEvent.objects.get(action="targeting.updated")
    assert event.environment_id == targeting.environment_id
    assert event.before["version"] == 1 and event.after["version"] == 2
    assert event.before["enabled"] is False and event.after["enabled"] is True


def test_targeting_update__split_not_summing_to_100__refused() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.targeting_update(targeting=_targeting(flag), actor=TEST_ACTOR, default_serve={
            "split": [{"variation": "none", "weight": 50_000}, {"variation": "write", "weight": 40_000}]})
    assert "default_serve" in _error_fields(exc)
    assert "90 %" in str(exc.value)
    assert _targeting(flag).version == 1


def test_targeting_update__unknown_operator__refused() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.targeting_update(targeting=_targeting(flag), actor=TEST_ACTOR, rules=[
            {"clauses": [{"attribute": "plan", "op": "resembles", "values": ["pro"]}], "serve": {"variation": "write"}}])
    assert "rules" in _error_fields(exc)
    assert "unknown operator 'resembles'" in str(exc.value)
    assert _targeting(flag).rules == []


def test_targeting_update__regex_that_does_not_compile__refused() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.targeting_update(targeting=_targeting(flag), actor=TEST_ACTOR, rules=[
            {"clauses": [{"attribute": "email", "op": "matches", "values": ["(unclosed"]}],
             "serve": {"variation": "write"}}])
    assert "does not compile" in str(exc.value)
    assert _targeting(flag).version == 1


def test_targeting_update__unknown_variation_or_segment__refused() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.targeting_update(targeting=_targeting(flag), actor=TEST_ACTOR, rules=[
            {"clauses": [{"op": "in_segment", "values": ["ghosts"]}], "serve": {"variation": "admin"}}])
    message = str(exc.value)
    assert "unknown variation 'admin'" in message and "ghosts" in message


def test_targeting_update__key_targeted_to_two_variations__refused() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.targeting_update(targeting=_targeting(flag), actor=TEST_ACTOR, targets=[
            {"variation": "write", "values": ["acct-1"]}, {"variation": "none", "values": ["acct-1"]}])
    assert "already targeted" in str(exc.value)


def test_targeting_update__stale_version__refused_as_conflict() -> None:
    flag = make_string_flag(make_project())
    services.targeting_update(targeting=_targeting(flag), actor=TEST_ACTOR, enabled=True)
    with pytest.raises(services.ConflictError):
        services.targeting_update(targeting=_targeting(flag), actor=TEST_ACTOR, expected_version=1, enabled=False)
    assert _targeting(flag).enabled is True


def test_targeting_update__every_change__increases_version() -> None:
    flag = make_string_flag(make_project())
    versions = []
    for enabled in (True, False, True):
        versions.append(services.targeting_update(targeting=_targeting(flag), actor=TEST_ACTOR, enabled=enabled).version)
    assert versions == [2, 3, 4]
    assert AuditEvent.objects.filter(action="targeting.updated").count() == 3


# --- segments ------------------------------------------------------------------------------


def test_segment_create__rule_refers_to_itself__refused() -> None:
    project = make_project()
    with pytest.raises(ValidationError) as exc:
        services.segment_create(project=project, key="loop", name="Loop", actor=TEST_ACTOR,
                                rules=[{"clauses": [{"op": "in_segment", "values": ["loop"]}]}])
    assert "rules" in _error_fields(exc)
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
    services.targeting_update(targeting=_targeting(flag), actor=TEST_ACTOR, rules=[
        {"clauses": [{"op": "in_segment", "values": ["beta"]}], "serve": {"variation": "read_only"}}])
    with pytest.raises(ValidationError) as exc:
        services.segment_delete(segment=segment, actor=TEST_ACTOR)
    assert "tool_mode in Development" in str(exc.value)
    assert Segment.objects.filter(key="beta").exists()


# --- SDK keys ------------------------------------------------------------------------------


def test_sdk_key_create__raw_key_returned_once__only_hash_stored() -> None:
    project = make_project()
    environment = project.environments.get(key="production")
    sdk_key, raw_key = services.sdk_key_create(environment=environment, name="api", actor=TEST_ACTOR)
    assert raw_key.startswith("fo_srv_") and len(raw_key) > 40
    assert sdk_key.key_hash == services.hash_sdk_key(raw_key) and raw_key not in sdk_key.key_hash
    assert raw_key.startswith(sdk_key.prefix)
    event = AuditEvent.objects.get(action="sdk_key.created")
    assert raw_key not in str(event.after)
    services.sdk_key_revoke(sdk_key=sdk_key, actor=TEST_ACTOR)
    sdk_key.refresh_from_db()
    assert sdk_key.revoked_at is not None
    assert AuditEvent.objects.filter(action="sdk_key.revoked").count() == 1


# --- the audit row shares the change's transaction -----------------------------------------


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
