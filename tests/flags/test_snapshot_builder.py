"""The snapshot builder (flags/snapshot_builder.py): PostgreSQL builds a snapshot in one SQL
statement, every other database through the ORM. Both must hand the engine the same data, so
the statement is held to the ORM build on catalogs that exercise each part of it: segments,
archived flags inside and past their grace period, revoked SDK keys, variations whose sort
order differs from the order they were written in."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from flags import services
from flags.constants import LifecycleStage
from flags.models import Environment, Flag, Project, SdkKey, Variation
from flags.snapshot_builder import _build, build_environment_snapshot
from tests.factories import TEST_ACTOR
from tests.flags.support import string_flag

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def _orm_build(environment_id: int) -> dict[str, Any]:
    with transaction.atomic():
        return _build(environment_id)


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    """The snapshot without the build time, and with the order of flags and variations made
    visible (dict equality ignores order; the engine and the bulk answer do not)."""
    data = {name: value for name, value in data.items() if name != "built_at"}
    data["environment"] = dict(data["environment"])
    data["environment"]["changed_at"] = pytest.approx(data["environment"]["changed_at"], abs=1e-3)
    data["flag_order"] = list(data["flags"])
    data["variation_order"] = {key: list(flag["variations"]) for key, flag in data["flags"].items()}
    data["segment_order"] = list(data["segments"])
    return data


@pytest.fixture
def varied_catalog(demo: Project, other_project: Project) -> Project:
    """The demo plus a second project, with every case the SQL statement treats on its own."""
    now = timezone.now()
    # Variations whose sort order is the reverse of their insertion order, and two that tie
    # on sort order (the id decides between them).
    reordered = string_flag(demo, "reordered_variations", variations=[
        {"key": "first_written", "value": "one"}, {"key": "second_written", "value": "two", "risk_rank": 1},
        {"key": "third_written", "value": "three", "risk_rank": 1}], fallback_variation_key="first_written")
    for sort_order, key in ((5, "first_written"), (1, "second_written"), (1, "third_written")):
        Variation.objects.filter(flag=reordered, key=key).update(sort_order=sort_order)
    # Archived flags: one still within its grace period (served), one past it, one with none (neither served).
    in_grace = string_flag(demo, "archived_in_grace")
    past_grace = string_flag(demo, "archived_past_grace")
    no_grace = string_flag(demo, "archived_without_grace")
    Flag.objects.filter(pk=in_grace.pk).update(stage=LifecycleStage.ARCHIVED, served_until=now + datetime.timedelta(days=3))
    Flag.objects.filter(pk=past_grace.pk).update(stage=LifecycleStage.ARCHIVED,
                                                 served_until=now - datetime.timedelta(minutes=1))
    Flag.objects.filter(pk=no_grace.pk).update(stage=LifecycleStage.ARCHIVED, served_until=None)
    # Segments with keys and rules, in the second project too.
    services.segment_create(project=demo, key="aaa_first_segment", name="First", included_keys=["acct-1", "acct-2"],
                            excluded_keys=["acct-3"], actor=TEST_ACTOR)
    services.segment_create(project=other_project, key="beta_testers", name="Beta testers",
                            included_keys=["acct-9"], actor=TEST_ACTOR)
    # SDK keys, one of them revoked, in several environments.
    for environment in Environment.objects.all():
        services.sdk_key_create(environment=environment, name="live", actor=TEST_ACTOR)
        revoked, _ = services.sdk_key_create(environment=environment, name="old", actor=TEST_ACTOR)
        services.sdk_key_revoke(sdk_key=revoked, actor=TEST_ACTOR, reason="rotated")
    return demo


def test_sql_build__every_environment__equals_the_orm_build(varied_catalog: Project) -> None:
    # Given a catalog with segments, archived flags, revoked keys and reordered variations
    environments = list(Environment.objects.order_by("id").values_list("id", flat=True))
    assert len(environments) >= 4  # the demo's three and the second project's
    # When each environment is built both ways
    for environment_id in environments:
        sql = build_environment_snapshot(environment_id)
        orm = _orm_build(environment_id)
        # Then they agree on everything but the build time
        assert _comparable(sql) == _comparable(orm), f"environment {environment_id}"


def test_sql_build__the_cases_it_must_cover__are_in_the_snapshot(varied_catalog: Project) -> None:
    # Given the varied catalog (so that the equality above is not two builds agreeing on nothing)
    development = Environment.objects.get(project=varied_catalog, key="development")
    # When it is built by PostgreSQL
    sql = build_environment_snapshot(development.pk)
    # Then the archived flag in its grace period is served and the retired ones are not
    assert "archived_in_grace" in sql["flags"]
    assert "archived_past_grace" not in sql["flags"]
    assert "archived_without_grace" not in sql["flags"]
    # and variations follow their sort order, then their id
    assert list(sql["flags"]["reordered_variations"]["variations"]) == [
        "second_written", "third_written", "first_written"]
    # and flags come in key order
    assert list(sql["flags"]) == sorted(sql["flags"])
    # and the revoked key is known as revoked, the live one as live
    states = {SdkKey.objects.get(key_hash=key_hash).name: revoked for key_hash, revoked in sql["sdk_keys"].items()}
    assert states == {"live": False, "old": True}
    assert sql["segments"]["aaa_first_segment"]["included_keys"] == ["acct-1", "acct-2"]
    assert sql["environment"]["version"] == Environment.objects.get(pk=development.pk).version


def test_sql_build__unknown_environment__raises_does_not_exist(db: None) -> None:
    with pytest.raises(Environment.DoesNotExist):
        build_environment_snapshot(987_654)
