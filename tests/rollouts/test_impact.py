"""The share of recently seen units a change would move (rollouts/impact.py): re-evaluated with
the engine knowing only each unit's key; "unknown" where an attribute nobody records decides;
what a unit was served settles the rules it could not have matched; one query for the units."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from flags.evaluation.engine import bucket_of
from rollouts import impact
from rollouts.impact import Estimate, SeenUnit, estimate, evaluate_unit
from telemetry.models import UnitExposure

FLAG, SALT = "tool_mode", "s4lt"
VARIATIONS = {"none": {"value": "none", "risk_rank": 0}, "read_only": {"value": "read_only", "risk_rank": 1},
              "approval_required": {"value": "approval_required", "risk_rank": 3},
              "write": {"value": "write", "risk_rank": 4}}
UNITS = [f"acct-{n:03d}" for n in range(100)]
PLAN_BETA = {"clauses": [{"attribute": "plan", "op": "in", "values": ["beta"]}]}


def state(**targeting: Any) -> dict[str, Any]:
    """A served state of the tool-mode flag, on, bucketed by account."""
    return {"enabled": True, "fallback": "read_only", "json_schema": None, "variations": VARIATIONS,
            "targets": [], "rules": [], "default_serve": {"variation": "read_only"}, "assignment_unit": "accountId",
            "segments": {}, **targeting}


def seen(units: list[str], variant: str) -> list[SeenUnit]:
    return [SeenUnit(unit, variant) for unit in units]


def test_estimate__individual_targets_added__exactly_those_units_change() -> None:
    targeted = UNITS[:10]
    proposed = state(targets=[{"variation": "write", "values": targeted}])
    result = estimate(flag_key=FLAG, salt=SALT, before=state(), after=proposed, units=seen(UNITS, "read_only"))
    assert result == Estimate(units=len(UNITS), changed=len(targeted), unknown=0)
    assert result.text == ("10 % of 100 units seen in the last day would get a different variation "
                           "(0 % depend on attributes not recorded).")


def test_estimate__targets_replaced_by_a_rule_on_the_key__the_keys_left_out_change() -> None:
    """Given ten accounts targeted individually, when a rule on the account key keeps five of
    them on write, then the other five fall back to the default and nobody else moves."""
    before = state(targets=[{"variation": "write", "values": UNITS[:10]}])
    after = state(rules=[{"id": "r", "clauses": [{"attribute": "accountId", "op": "in", "values": UNITS[:5]}],
                          "serve": {"variation": "write"}}])
    units = seen(UNITS[:10], "write") + seen(UNITS[10:], "read_only")
    result = estimate(flag_key=FLAG, salt=SALT, before=before, after=after, units=units)
    assert (result.units, result.changed, result.unknown) == (100, len(UNITS[5:10]), 0)


def test_estimate__a_split_default__the_units_the_engine_buckets_into_the_candidate() -> None:
    split = {"split": [{"variation": "read_only", "weight": 50_000}, {"variation": "write", "weight": 50_000}]}
    result = estimate(flag_key=FLAG, salt=SALT, before=state(), after=state(default_serve=split),
                      units=seen(UNITS, "read_only"))
    in_write = [u for u in UNITS if bucket_of(FLAG, SALT, u) >= 50_000]
    assert 0 < len(in_write) < len(UNITS)
    assert (result.changed, result.unknown) == (len(in_write), 0)
    assert all(evaluate_unit(flag_key=FLAG, salt=SALT, state=state(default_serve=split), unit=u) == "write"
               for u in in_write)


def test_estimate__new_rule_on_an_unrecorded_attribute__unknown_except_the_targeted() -> None:
    targets = [{"variation": "write", "values": UNITS[:10]}]
    after = state(targets=targets, rules=[{"id": "beta", **PLAN_BETA, "serve": {"variation": "write"}}])
    units = seen(UNITS[:10], "write") + seen(UNITS[10:], "read_only")
    result = estimate(flag_key=FLAG, salt=SALT, before=state(targets=targets), after=after, units=units)
    assert (result.changed, result.unknown) == (0, len(UNITS[10:]))
    assert result.text.endswith("(90 % depend on attributes not recorded): between 0 % and 90 %.")


def test_estimate__segment_with_attribute_rules__what_a_unit_got_decides_the_kept_rule() -> None:
    """Given a kept rule for a segment matched by email (not recorded): units that got its
    variation matched it (nothing else serves that), the others did not. Adding targets in
    front moves exactly the targeted units."""
    segments = {"internal": {"included_keys": [], "excluded_keys": [],
                             "rules": [{"clauses": [{"attribute": "email", "op": "ends_with", "values": ["@x"]}]}]}}
    internal = {"id": "internal", "clauses": [{"op": "in_segment", "values": ["internal"]}],
                "serve": {"variation": "approval_required"}}
    before = state(rules=[internal], segments=segments)
    targeted = UNITS[20:30]
    after = state(rules=[internal], segments=segments, targets=[{"variation": "write", "values": targeted}])
    units = seen(UNITS[:20], "approval_required") + seen(UNITS[20:], "read_only")
    result = estimate(flag_key=FLAG, salt=SALT, before=before, after=after, units=units)
    assert (result.changed, result.unknown) == (len(targeted), 0)
    # With its segment widened it is another rule: what units got says nothing of it. The
    # account added to the segment moves; whether the others match it depends on their email.
    wider = {"internal": {**segments["internal"], "included_keys": ["acct-099"]}}
    widened = estimate(flag_key=FLAG, salt=SALT, before=before, after=state(rules=[internal], segments=wider),
                       units=units)
    assert (widened.changed, widened.unknown) == (1, len(UNITS) - 1)


def test_estimate__turned_off__everyone_not_on_the_fallback_changes() -> None:
    units = seen(UNITS[:30], "write") + seen(UNITS[30:], "read_only")
    before = state(targets=[{"variation": "write", "values": UNITS[:30]}],
                   rules=[{"id": "beta", **PLAN_BETA, "serve": {"variation": "write"}}])
    off = {"enabled": False, "fallback": "read_only", "json_schema": None,
           "variations": {"read_only": VARIATIONS["read_only"]}}
    result = estimate(flag_key=FLAG, salt=SALT, before=before, after=off, units=units)
    assert (result.changed, result.unknown) == (30, 0)


def test_estimate__no_units__says_so() -> None:
    result = estimate(flag_key=FLAG, salt=SALT, before=state(), after=state(enabled=False), units=[])
    assert result.text == "No exposures in the last day: no estimate."


def _exposure(unit: str, variant: str, last_seen: datetime.datetime, flag_id: int = 1, environment_id: int = 2) -> Any:
    return UnitExposure(flag_id=flag_id, environment_id=environment_id, variant=variant, unit=unit,
                        first_seen=last_seen, last_seen=last_seen)


@pytest.mark.django_db
def test_recent_units__one_query_for_every_pair__latest_variant_most_recent_first_and_capped() -> None:
    now = timezone.now()
    UnitExposure.objects.bulk_create(
        [_exposure(f"u{n}", "read_only", now - datetime.timedelta(minutes=n)) for n in range(30)]
        + [_exposure("u0", "write", now - datetime.timedelta(hours=2)),  # an older variant of u0
           _exposure("old", "write", now - datetime.timedelta(hours=30)),  # outside the day
           _exposure("x1", "none", now, flag_id=3, environment_id=2)]
    )
    with CaptureQueriesContext(connection) as captured:
        found = impact.recent_units([(1, 2), (3, 2), (9, 9)], now=now, limit=30)
    assert len(captured.captured_queries) == 1
    units, capped = found[(1, 2)]
    assert capped and [u.unit for u in units] == [f"u{n}" for n in range(10)]  # 30 shared by 3 pairs
    assert units[0] == SeenUnit("u0", "read_only")
    assert found[(3, 2)] == ([SeenUnit("x1", "none")], False) and found[(9, 9)] == ([], False)
    everything, capped = impact.recent_units([(1, 2)], now=now)[(1, 2)]
    assert not capped and len(everything) == 30 and "old" not in {u.unit for u in everything}
