"""Targeting in the catalog services (flags/services/targeting.py): rules, splits and targets
validated, versioned against stale writers, and audited."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from flags import services
from flags.models import Environment
from tests.factories import TEST_ACTOR, make_project, make_string_flag
from tests.flags.services.support import error_fields, targeting_of

pytestmark = pytest.mark.django_db


def test_targeting_update__rules_split_and_targets__saved_versioned_and_audited() -> None:
    flag = make_string_flag(make_project())
    targeting = targeting_of(flag)
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
        services.targeting_update(targeting=targeting_of(flag), actor=TEST_ACTOR, default_serve={
            "split": [{"variation": "none", "weight": 50_000}, {"variation": "write", "weight": 40_000}]})
    assert "default_serve" in error_fields(exc)
    assert "90 %" in str(exc.value)
    assert targeting_of(flag).version == 1


def test_targeting_update__unknown_operator__refused() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.targeting_update(targeting=targeting_of(flag), actor=TEST_ACTOR, rules=[
            {"clauses": [{"attribute": "plan", "op": "resembles", "values": ["pro"]}], "serve": {"variation": "write"}}])
    assert "rules" in error_fields(exc)
    assert "unknown operator 'resembles'" in str(exc.value)
    assert targeting_of(flag).rules == []


def test_targeting_update__regex_that_does_not_compile__refused() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.targeting_update(targeting=targeting_of(flag), actor=TEST_ACTOR, rules=[
            {"clauses": [{"attribute": "email", "op": "matches", "values": ["(unclosed"]}],
             "serve": {"variation": "write"}}])
    assert "does not compile" in str(exc.value)
    assert targeting_of(flag).version == 1


def test_targeting_update__unknown_variation_or_segment__refused() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.targeting_update(targeting=targeting_of(flag), actor=TEST_ACTOR, rules=[
            {"clauses": [{"op": "in_segment", "values": ["ghosts"]}], "serve": {"variation": "admin"}}])
    message = str(exc.value)
    assert "unknown variation 'admin'" in message and "ghosts" in message


def test_targeting_update__key_targeted_to_two_variations__refused() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(ValidationError) as exc:
        services.targeting_update(targeting=targeting_of(flag), actor=TEST_ACTOR, targets=[
            {"variation": "write", "values": ["acct-1"]}, {"variation": "none", "values": ["acct-1"]}])
    assert "already targeted" in str(exc.value)


def test_targeting_update__stale_version__refused_as_conflict() -> None:
    flag = make_string_flag(make_project())
    services.targeting_update(targeting=targeting_of(flag), actor=TEST_ACTOR, enabled=True)
    with pytest.raises(services.ConflictError):
        services.targeting_update(targeting=targeting_of(flag), actor=TEST_ACTOR, expected_version=1, enabled=False)
    assert targeting_of(flag).enabled is True


def test_targeting_update__every_change__increases_version() -> None:
    flag = make_string_flag(make_project())
    versions = []
    for enabled in (True, False, True):
        versions.append(services.targeting_update(targeting=targeting_of(flag), actor=TEST_ACTOR, enabled=enabled).version)
    assert versions == [2, 3, 4]
    assert AuditEvent.objects.filter(action="targeting.updated").count() == 3

