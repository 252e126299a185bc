"""Variations in the catalog services (flags/services/catalog.py): values checked against the
flag's type and JSON Schema, keys fixed, deletes refused while something serves or falls back
to the variation; each write audited."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from flags import services
from flags.constants import BehaviorSurface, Lifetime, ValueType
from flags.models import Environment
from tests.factories import TEST_ACTOR, make_boolean_flag, make_json_flag, make_project, make_string_flag
from tests.flags.services.support import error_fields, targeting_of

pytestmark = pytest.mark.django_db


def test_variation_create__string_value_on_boolean_flag__refused() -> None:
    flag = make_boolean_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.variation_create(flag=flag, key="maybe", value="true", actor=TEST_ACTOR)
    assert "value" in error_fields(exc)
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
    assert "key" in error_fields(exc)
    assert flag.variations.filter(key="write").count() == 1


def test_variation_update__value_violating_schema__refused_and_value_kept() -> None:
    flag = make_json_flag(make_project())
    candidate = flag.variations.get(key="candidate")
    with pytest.raises(ValidationError) as exc:
        services.variation_update(variation=candidate, actor=TEST_ACTOR, value={"prompt": "v4", "temperature": 9})
    assert "value" in error_fields(exc)
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
    assert "key" in error_fields(exc)


def test_variation_delete__referenced_by_targeting__refused_naming_where() -> None:
    flag = make_string_flag(make_project())
    services.targeting_update(targeting=targeting_of(flag), actor=TEST_ACTOR,
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

