"""Constraints the database itself enforces, and row locking under concurrency (PostgreSQL)."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from flags import services
from flags.models import Flag, Targeting, Variation
from tests.concurrency import run_together
from tests.factories import TEST_ACTOR, make_project, make_string_flag


@pytest.mark.django_db
@pytest.mark.parametrize("bad_key", ["Has Caps", "with space", ""])
def test_flag_key__written_around_the_services__rejected_by_database(bad_key: str) -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(IntegrityError), transaction.atomic():
        Flag.objects.filter(pk=flag.pk).update(key=bad_key)


@pytest.mark.django_db
def test_variation_key__duplicate_written_directly__rejected_by_database() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(IntegrityError), transaction.atomic():
        Variation.objects.create(flag=flag, key="write", value="write")


@pytest.mark.django_db
def test_json_schema__on_a_non_json_flag_written_directly__rejected_by_database() -> None:
    flag = make_string_flag(make_project())
    with pytest.raises(IntegrityError), transaction.atomic():
        Flag.objects.filter(pk=flag.pk).update(json_schema={"type": "string"})


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_targeting_update__two_writers_same_base_version__exactly_one_wins() -> None:
    # Given one targeting at version 1
    flag = make_string_flag(make_project())
    targeting = Targeting.objects.get(flag=flag, environment__key="development")

    def writer(enabled: bool) -> str:
        try:
            services.targeting_update(targeting=targeting, actor=TEST_ACTOR, expected_version=1, enabled=enabled,
                                      assignment_unit="accountId" if enabled else "userId")
            return "applied"
        except services.ConflictError:
            return "conflict"

    # When two writers both based on version 1 save at once
    outcomes, errors = run_together(lambda: writer(True), lambda: writer(False))
    # Then the row lock serialises them: one applies, the other sees a stale version
    assert sorted(outcomes) == ["applied", "conflict"], errors
    targeting.refresh_from_db()
    assert targeting.version == 2
    from audit.models import AuditEvent

    assert AuditEvent.objects.filter(action="targeting.updated").count() == 1
