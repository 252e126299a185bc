"""How many recently evaluated units a change request would move to another variation.

The units seen in the last day come from telemetry (`UnitExposure`: the unit key and the
variant it was last assigned), in one query (`recent_units`). Each is re-evaluated under the
base and the proposed served state with the real engine (flags/evaluation/engine.py), knowing
only what telemetry records of it: its key, as the assignment unit and as `targetingKey`.

A rule that reads anything else (a clause on another attribute, a segment with attribute
rules the unit is not listed in) cannot be decided for the unit. What the unit was served
decides some of them: a rule that serves none of the variant it got did not match it, and a
rule that was its only way to get that variant did. A rule that stays undecided leaves the
unit *unknown*, unless what follows it is the same in both states (the unit then gets what
it got). Everything below `recent_units` is pure: no Django, no database.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flags.evaluation.engine import CompiledFlag, bucket_of, compile_snapshot, evaluate
from flags.evaluation.targeting_schema import SEGMENT_OPERATOR, referenced_segments, served_variations

RECENT = datetime.timedelta(hours=24)
UNIT_LIMIT = 20_000  # units evaluated per change request, the most recently seen first


@dataclass(frozen=True)
class SeenUnit:
    unit: str
    variant: str  # the variant it was last assigned


@dataclass(frozen=True)
class Estimate:
    units: int
    changed: int  # known to get another variation
    unknown: int  # decided by attributes telemetry does not record
    capped: bool = False

    def share(self, count: int) -> str:
        value = 100 * count / self.units if self.units else 0.0
        text = f"{value:.1f}".removesuffix(".0")
        return "< 0.1" if count and text == "0" else text

    @property
    def text(self) -> str:
        if not self.units:
            return "No exposures in the last day: no estimate."
        noun = "unit" if self.units == 1 else "units"
        text = (f"{self.share(self.changed)} % of {self.units:,} {noun} seen in the last day would get a different "
                f"variation ({self.share(self.unknown)} % depend on attributes not recorded)")
        if self.unknown:
            text += f": between {self.share(self.changed)} % and {self.share(self.changed + self.unknown)} %"
        text += "."
        if self.capped:
            text += f" Only the {self.units:,} most recently seen units were evaluated."
        return text


# --- the query ------------------------------------------------------------------------------


def recent_units(pairs: Sequence[tuple[int, int]], *, now: datetime.datetime,
                 limit: int = UNIT_LIMIT) -> dict[tuple[int, int], tuple[list[SeenUnit], bool]]:
    """(flag id, environment id) → the units seen there in the last day, most recent first,
    each with the variant it last got, and whether the limit cut the list. One query for all
    pairs; the limit is shared between them."""
    from django.db.models import F, Q, Window
    from django.db.models.functions import RowNumber

    from telemetry.models import UnitExposure

    found: dict[tuple[int, int], tuple[list[SeenUnit], bool]] = {pair: ([], False) for pair in pairs}
    if not pairs:
        return found
    per_pair = max(limit // len(pairs), 1)
    scope = Q()
    for flag_id, environment_id in pairs:
        scope |= Q(flag_id=flag_id, environment_id=environment_id)
    rows = (UnitExposure.objects.filter(scope, last_seen__gte=now - RECENT)
            .annotate(rank=Window(RowNumber(), partition_by=[F("flag_id"), F("environment_id")],
                                  order_by=[F("last_seen").desc(), F("id").desc()]))
            .filter(rank__lte=per_pair + 1)  # one more than kept: it says the list was cut
            .order_by("flag_id", "environment_id", "rank")
            .values_list("flag_id", "environment_id", "unit", "variant", "rank"))
    seen: dict[tuple[int, int], set[str]] = {}
    for flag_id, environment_id, unit, variant, rank in rows:
        pair = (flag_id, environment_id)
        units, capped = found[pair]
        if rank > per_pair:
            found[pair] = (units, True)
            continue
        if unit not in seen.setdefault(pair, set()):  # a unit seen with two variants: the latest
            seen[pair].add(unit)
            units.append(SeenUnit(unit, variant))
    return found


# --- one side of the change, compiled ---------------------------------------------------------


def _segment_closure(keys: Iterable[str], segments: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    stack = list(keys)
    while stack:
        key = stack.pop()
        if key in found or key not in segments:
            continue
        found[key] = segments[key]
        stack.extend(referenced_segments(segments[key].get("rules")))
    return found


class _Side:
    """A served state (flags/served_state/state.py) compiled with the engine for one flag, and
    what decides each of its rules for a unit of which only the key is known."""

    def __init__(self, *, flag_key: str, salt: str, state: Mapping[str, Any], known: frozenset[str]) -> None:
        self.enabled = bool(state.get("enabled"))
        self.fallback = str(state.get("fallback"))
        self.unit_attribute = str(state.get("assignment_unit") or "targetingKey")
        self.unit_known = self.unit_attribute in known
        segments: Mapping[str, Mapping[str, Any]] = state.get("segments") or {}
        self.rules: list[Mapping[str, Any]] = list(state.get("rules") or []) if self.enabled else []
        self.default = state.get("default_serve") or {"variation": self.fallback}
        targeting = {"enabled": self.enabled, "targets": list(state.get("targets") or []) if self.enabled else [],
                     "rules": self.rules, "default_serve": self.default, "assignment_unit": self.unit_attribute}
        variations = {key: v.get("value") for key, v in (state.get("variations") or {}).items()}
        snapshot = compile_snapshot({
            "environment": {"id": 0, "key": "review", "version": 0},
            "flags": {flag_key: {"key": flag_key, "salt": salt, "fallback": self.fallback, "variations": variations,
                                 "targeting": targeting}},
            "segments": dict(segments),
        })
        self.snapshot = snapshot
        self.flag: CompiledFlag = snapshot.flags[flag_key]
        self.targets = self.flag.targets
        self.identities: list[str] = []
        self.open_always: list[bool] = []  # reads an attribute nobody records
        self.keyed: list[list[frozenset[str]]] = []  # segments with rules: decided only for the units they list
        self.serves: list[set[str]] = []
        for rule in self.rules:
            clauses = rule.get("clauses") or []
            reached = _segment_closure(referenced_segments([rule]), segments)
            self.identities.append(json.dumps({"clauses": clauses, "serve": rule.get("serve"), "segments": reached},
                                              sort_keys=True, default=str))
            self.open_always.append(any(c.get("op") != SEGMENT_OPERATOR and c.get("attribute") not in known
                                        for c in clauses))
            direct = {key for c in clauses if c.get("op") == SEGMENT_OPERATOR for key in c.get("values") or []}
            self.keyed.append([frozenset(segments[key].get("included_keys") or [])
                               | frozenset(segments[key].get("excluded_keys") or [])
                               for key in sorted(direct) if key in segments and segments[key].get("rules")])
            self.serves.append(served_variations(rule.get("serve")))
        self.serves.append(served_variations(self.default))  # index len(rules): the default rule

    @property
    def broken(self) -> bool:
        return self.enabled and self.flag.broken is not None

    def truth(self, index: int, context: Mapping[str, Any], unit: str) -> bool | None:
        """Whether rule `index` matches the unit, or None when what is known cannot say."""
        if self.open_always[index] or any(unit not in keys for keys in self.keyed[index]):
            return None
        return all(matcher(context, unit) for matcher in self.flag.rules[index].matchers)

    def served(self, index: int, unit: str) -> str | None:
        """The variant rule `index` (the default rule at len(rules)) serves the unit."""
        serve = self.flag.rules[index].serve if index < len(self.rules) else self.flag.default
        result = serve.result or serve.pick(bucket_of(self.flag.key, self.flag.salt, unit))
        return result.variant

    def tail(self, index: int) -> str:
        """What decides a unit that reaches rule `index` (-1: the individual targets)."""
        return json.dumps({"targets": sorted(self.targets.items()) if index < 0 else None,
                           "rules": self.identities[max(index, 0):], "default": self.default,
                           "unit": self.unit_attribute}, sort_keys=True, default=lambda r: r.variant)


@dataclass
class _Base:
    variant: str | None
    ambiguous_at: int | None  # the rule the unit reached and what is known cannot decide
    not_matched: set[str]
    matched: set[str]


def _walk_base(side: _Side, unit: str, context: Mapping[str, Any], got: str) -> _Base:
    """The base state for one unit: what it serves, the rules known not to match (or to match)
    the unit, helped by the variant it got."""
    result = _Base(None, None, set(), set())
    if not side.enabled:
        result.variant = side.fallback
        return result
    if side.broken or not side.unit_known:
        result.variant, result.ambiguous_at = got, -1
        return result
    if unit in side.targets:
        result.variant = side.targets[unit].variant
        return result
    count = len(side.rules)
    for index in range(count):
        known = side.truth(index, context, unit)
        if known is None:
            if got not in side.serves[index]:
                known = False  # it would have got one of this rule's variations
            elif not any(got in side.serves[later] and (later == count or side.truth(later, context, unit) is not False)
                         for later in range(index + 1, count + 1)):
                known = True  # nothing after it could have served what it got
        if known is None:
            result.variant, result.ambiguous_at = got, index
            return result
        (result.matched if known else result.not_matched).add(side.identities[index])
        if known:
            result.variant = side.served(index, unit)
            return result
    result.variant = side.served(count, unit)
    return result


def _fate(base: _Side, proposed: _Side, unit: str, got: str) -> str:
    """"same", "changed" or "unknown" for one unit."""
    context = {"targetingKey": unit, base.unit_attribute: unit}
    before = _walk_base(base, unit, context, got)
    after: str | None = None
    if not proposed.enabled:
        after = proposed.fallback
    elif proposed.broken:
        return "unknown"
    elif not proposed.unit_known:
        same_tail = before.ambiguous_at == -1 and proposed.tail(-1) == base.tail(-1)
        return "same" if same_tail else "unknown"
    elif unit in proposed.targets:
        after = proposed.targets[unit].variant
    else:
        count = len(proposed.rules)
        for index in range(count + 1):
            if index == count:
                after = proposed.served(count, unit)
                break
            known = proposed.truth(index, context, unit)
            identity = proposed.identities[index]
            if known is None and identity in before.not_matched:
                known = False
            elif known is None and identity in before.matched:
                known = True
            if known is None:
                # Undecided here; if the rest is the base's rest from where it was undecided, the
                # unit gets what it got.
                same_tail = before.ambiguous_at is not None and proposed.tail(index) == base.tail(before.ambiguous_at)
                return "same" if same_tail else "unknown"
            if known:
                after = proposed.served(index, unit)
                break
    return "same" if after == before.variant else "changed"


def estimate(*, flag_key: str, salt: str, before: Mapping[str, Any], after: Mapping[str, Any],
             units: Sequence[SeenUnit], capped: bool = False) -> Estimate:
    """Re-evaluate `units` under the served states `before` and `after` of one flag in one
    environment (pure)."""
    if not units:
        return Estimate(0, 0, 0, capped)
    known = frozenset({"targetingKey", str(before.get("assignment_unit") or "targetingKey")})
    base = _Side(flag_key=flag_key, salt=salt, state=before, known=known)
    proposed = _Side(flag_key=flag_key, salt=salt, state=after, known=known)
    fates = [_fate(base, proposed, seen.unit, seen.variant) for seen in units]
    return Estimate(len(units), fates.count("changed"), fates.count("unknown"), capped)


def evaluate_unit(*, flag_key: str, salt: str, state: Mapping[str, Any], unit: str) -> str | None:
    """The variant the engine serves one unit under a served state, knowing only its key (tests
    and the page's examples use it to check the walk above against the engine's own answer)."""
    side = _Side(flag_key=flag_key, salt=salt, state=state, known=frozenset({"targetingKey"}))
    return evaluate(side.snapshot, flag_key, {"targetingKey": unit, side.unit_attribute: unit}).variant
