"""The risk-aware approval policy's classification: compare what an environment would serve
after a change with what it serves now, and say why (if at all) the change raises risk. Pure
Python: no Django, no database. `classify_served_change` is the one judgement every write path
uses (see `flags/served_state/guard.py`); `classify_targeting_change` is its targeting part.

A change raises risk when:
- a variation with a higher risk rank than anything currently reachable becomes reachable
  by some audience (risk escalation, e.g. tool mode read_only → write for beta_accounts);
- a non-fallback variation's audience widens: targets added, a rule (or a rule's clauses)
  added, a split weight raised, the default rule moved to it;
- the flag is turned on;
- a rule is removed or moved so that its audience can fall through to a riskier variation;
- the assignment unit changes (every unit is bucketed anew);
- individual targets are removed whose keys can now fall through to a riskier variation;
- a segment the rules reach grows into a rule serving anything but the fallback, or shrinks
  out of a rule so that its people can fall through to something riskier;
- a reachable variation's value changes or its risk rank is lowered; the fallback or the JSON
  Schema changes.
Changes that only move traffic towards the fallback (turning off, lowering a candidate's
weight, removing targets of riskier variations) raise none of these: they are de-escalations.

Flag-wide changes are classified by `classify_flag_change`: the value of a variation served
anywhere, the fallback variation, the JSON Schema or the value type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flags.served_state.state import targeting_of

FULL = 100_000


@dataclass(frozen=True)
class PolicyReason:
    code: str
    text: str
    escalation: bool = False


@dataclass(frozen=True)
class Classification:
    reasons: tuple[PolicyReason, ...]

    @property
    def raises_risk(self) -> bool:
        return bool(self.reasons)

    @property
    def escalation(self) -> bool:
        return any(reason.escalation for reason in self.reasons)


def _serve_weights(serve: Mapping[str, Any] | None) -> dict[str, int]:
    if not serve:
        return {}
    if "variation" in serve:
        return {serve["variation"]: FULL}
    return {b["variation"]: int(b["weight"]) for b in serve.get("split", []) if int(b["weight"]) > 0}


def _rule_signature(rule: Mapping[str, Any]) -> str:
    """A rule's audience: its clauses (ids and descriptions do not change who matches)."""
    return json.dumps(rule.get("clauses", []), sort_keys=True)


def _rule_label(rule: Mapping[str, Any], index: int) -> str:
    return str(rule.get("description") or rule.get("id") or f"rule {index + 1}")


@dataclass(frozen=True)
class _Exposure:
    """Who can get each variation: target keys, per-rule weights, default weight."""

    targets: dict[str, frozenset[str]]
    rules: dict[str, dict[str, int]]  # rule signature -> variation -> weight
    rule_labels: dict[str, str]
    default: dict[str, int]

    def reachable(self, fallback: str) -> set[str]:
        found = {fallback}
        found |= {v for v, keys in self.targets.items() if keys}
        for weights in self.rules.values():
            found |= set(weights)
        return found | set(self.default)


def _exposure(state: Mapping[str, Any]) -> _Exposure:
    if not state.get("enabled"):
        return _Exposure({}, {}, {}, {})
    targets: dict[str, set[str]] = {}
    for target in state.get("targets", []):
        targets.setdefault(target["variation"], set()).update(target["values"])
    rules: dict[str, dict[str, int]] = {}
    labels: dict[str, str] = {}
    for index, rule in enumerate(state.get("rules", [])):
        signature = _rule_signature(rule)
        rules.setdefault(signature, {})
        for variation, weight in _serve_weights(rule.get("serve")).items():
            rules[signature][variation] = max(weight, rules[signature].get(variation, 0))
        labels.setdefault(signature, _rule_label(rule, index))
    return _Exposure({v: frozenset(k) for v, k in targets.items()}, rules, labels,
                     _serve_weights(state.get("default_serve")))


def _risk(ranks: Mapping[str, int], variation: str) -> int:
    return int(ranks.get(variation, 0))


def _describe(variation: str, ranks: Mapping[str, int]) -> str:
    return f"{variation} (risk {_risk(ranks, variation)})"


def classify_targeting_change(
    *, current: Mapping[str, Any], proposed: Mapping[str, Any], risk_ranks: Mapping[str, int], fallback: str
) -> Classification:
    reasons: list[PolicyReason] = []
    before, after = _exposure(current), _exposure(proposed)

    # Risk escalation: a riskier variation than anything reachable today becomes reachable.
    reachable_before = before.reachable(fallback)
    ceiling = max(_risk(risk_ranks, v) for v in reachable_before)
    for variation in sorted(after.reachable(fallback) - reachable_before):
        if _risk(risk_ranks, variation) > ceiling:
            highest = max(reachable_before, key=lambda v: _risk(risk_ranks, v))
            reasons.append(PolicyReason(
                "risk_escalation",
                f"{_describe(variation, risk_ranks)} becomes reachable; the riskiest served today is "
                f"{_describe(highest, risk_ranks)}",
                escalation=True,
            ))

    # Widening: a non-fallback variation reaches more people.
    for variation in sorted(set(risk_ranks) - {fallback}):
        added = after.targets.get(variation, frozenset()) - before.targets.get(variation, frozenset())
        if added:
            reasons.append(PolicyReason("audience_widened", f"{len(added)} individual target(s) added to {variation}"))
        for signature, weights in after.rules.items():
            old = before.rules.get(signature, {}).get(variation, 0)
            new = weights.get(variation, 0)
            if new > old:
                label = after.rule_labels[signature]
                what = "new audience" if signature not in before.rules else "rule"
                reasons.append(PolicyReason(
                    "audience_widened",
                    f"{variation} for {label} ({what}): {old / 1000:g} % → {new / 1000:g} %"))
        old_default, new_default = before.default.get(variation, 0), after.default.get(variation, 0)
        if new_default > old_default:
            reasons.append(PolicyReason(
                "audience_widened", f"default rule serves {variation}: {old_default / 1000:g} % → {new_default / 1000:g} %"))

    if not current.get("enabled") and proposed.get("enabled"):
        reasons.append(PolicyReason("turned_on", "the flag is turned on"))

    reasons += _fallthrough_reasons(current, proposed, risk_ranks)
    reasons += _removed_target_reasons(before, after, proposed, risk_ranks)

    if current.get("enabled") and proposed.get("enabled") and \
            current.get("assignment_unit") != proposed.get("assignment_unit"):
        reasons.append(PolicyReason(
            "assignment_unit", f"assignment unit {current.get('assignment_unit')} → {proposed.get('assignment_unit')}: "
                               "every unit is bucketed anew"))
    return Classification(tuple(reasons))


def _fallthrough_reasons(current: Mapping[str, Any], proposed: Mapping[str, Any],
                         ranks: Mapping[str, int]) -> list[PolicyReason]:
    """A rule removed or moved lets its audience fall through to later rules and the default:
    a reason when what they can fall to is riskier than what the rule served them."""
    if not (current.get("enabled") and proposed.get("enabled")):
        return []
    old_rules: Sequence[Mapping[str, Any]] = current.get("rules", [])
    new_rules: Sequence[Mapping[str, Any]] = proposed.get("rules", [])
    new_order = [_rule_signature(r) for r in new_rules]
    old_order = [_rule_signature(r) for r in old_rules]
    reasons = []
    for index, rule in enumerate(old_rules):
        signature = old_order[index]
        served_risk = max((_risk(ranks, v) for v in _serve_weights(rule.get("serve"))), default=0)
        if signature in new_order:
            # Moved: rules now placed before it were after it, or not there.
            position = new_order.index(signature)
            earlier_now = set(new_order[:position]) - set(old_order[:index])
            candidates = [new_rules[new_order.index(s)] for s in earlier_now]
            what = "moved below another rule"
        else:
            position = _insert_point(old_order, index, new_order)
            candidates = list(new_rules[position:])
            what = "removed"
        exposed = set(_serve_weights(proposed.get("default_serve"))) if what == "removed" else set()
        for other in candidates:
            exposed |= set(_serve_weights(other.get("serve")))
        riskier = [v for v in exposed if _risk(ranks, v) > served_risk]
        if riskier:
            worst = max(riskier, key=lambda v: _risk(ranks, v))
            reasons.append(PolicyReason(
                "rule_order", f"{_rule_label(rule, index)} {what}: its audience can now get {_describe(worst, ranks)}"))
    return reasons


def _removed_target_reasons(before: _Exposure, after: _Exposure, proposed: Mapping[str, Any],
                            ranks: Mapping[str, int]) -> list[PolicyReason]:
    """Keys no longer targeted fall through to the rules and the default: a reason when what
    they can fall to is riskier than what their target served them (an opt-out removed)."""
    if not proposed.get("enabled"):
        return []
    still_targeted = set().union(*after.targets.values()) if after.targets else set()
    fall_to: set[str] = set(after.default)
    for weights in after.rules.values():
        fall_to |= set(weights)
    reasons = []
    for variation, keys in sorted(before.targets.items()):
        dropped = keys - still_targeted
        riskier = [v for v in fall_to if _risk(ranks, v) > _risk(ranks, variation)]
        if dropped and riskier:
            worst = max(riskier, key=lambda v: _risk(ranks, v))
            reasons.append(PolicyReason(
                "targets_removed", f"{len(dropped)} individual target(s) of {_describe(variation, ranks)} removed: "
                                   f"they can now get {_describe(worst, ranks)}"))
    return reasons


def _insert_point(old_order: list[str], index: int, new_order: list[str]) -> int:
    """Where a removed rule's audience now enters the proposed list: after the last rule that
    preceded it and survived."""
    for signature in reversed(old_order[:index]):
        if signature in new_order:
            return new_order.index(signature) + 1
    return 0


def classify_flag_change(
    *, value_changes: Mapping[str, tuple[Any, Any]], served_variations: set[str], fallback_change: tuple[str, str] | None,
    schema_changed: bool, value_type_changed: bool, rank_changes: Mapping[str, tuple[int, int]] | None = None,
) -> Classification:
    """Flag-wide changes, which reach every environment at once. Lowering a risk rank is one
    too: approvals are counted by risk, so a lowered rank would let a later escalation pass
    with fewer of them."""
    reasons = []
    for variation, (old_rank, new_rank) in sorted((rank_changes or {}).items()):
        if new_rank < old_rank:
            reasons.append(PolicyReason("risk_lowered", f"the risk rank of {variation} is lowered: {old_rank} → {new_rank}"))
    for variation, (old, new) in sorted(value_changes.items()):
        if variation in served_variations and old != new:
            reasons.append(PolicyReason("value_changed", f"the value of {variation}, which is served, changes"))
    if fallback_change and fallback_change[0] != fallback_change[1]:
        reasons.append(PolicyReason("fallback_changed", f"fallback {fallback_change[0]} → {fallback_change[1]}"))
    if schema_changed:
        reasons.append(PolicyReason("schema_changed", "the JSON Schema changes"))
    if value_type_changed:
        reasons.append(PolicyReason("value_type_changed", "the value type changes"))
    return Classification(tuple(reasons))


# --- served state: everything a governed environment can serve, compared as a whole ---------


def classify_served_change(*, before: Mapping[str, Any], after: Mapping[str, Any]) -> Classification:
    """Compare two served states (`flags.served_state.state.build_served_state`) of one flag
    in one environment: the targeting as above, plus the values and risk ranks of what is
    reachable, the fallback, the JSON Schema and the content of the segments the rules reach.
    Equal states raise nothing; the same rules apply whichever write made the difference."""
    if before == after:
        return Classification(())
    ranks = {key: int(v["risk_rank"]) for key, v in before["variations"].items()}
    ranks.update({key: int(v["risk_rank"]) for key, v in after["variations"].items()})
    reasons: list[PolicyReason] = []
    ceiling = max(int(v["risk_rank"]) for v in before["variations"].values())
    if before["fallback"] != after["fallback"]:
        new_rank = _risk(ranks, after["fallback"])
        reasons.append(PolicyReason("fallback_changed", f"fallback {before['fallback']} → {after['fallback']}",
                                    escalation=new_rank > ceiling))
    for key in sorted(set(before["variations"]) & set(after["variations"])):
        old, new = before["variations"][key], after["variations"][key]
        if old["value"] != new["value"]:
            reasons.append(PolicyReason("value_changed", f"the value of {key}, which is served, changes"))
        if int(new["risk_rank"]) < int(old["risk_rank"]):
            reasons.append(PolicyReason(
                "risk_lowered", f"the risk rank of {key} is lowered: {old['risk_rank']} → {new['risk_rank']}"))
    if before.get("json_schema") != after.get("json_schema"):
        reasons.append(PolicyReason("schema_changed", "the JSON Schema changes"))
    current, proposed = targeting_of(before), targeting_of(after)
    reasons += classify_targeting_change(current=current, proposed=proposed, risk_ranks=ranks,
                                         fallback=after["fallback"]).reasons
    if before.get("enabled") and after.get("enabled"):
        reasons += _segment_reasons(before.get("segments", {}), after.get("segments", {}), proposed, ranks,
                                    after["fallback"])
    return Classification(tuple(reasons))


def _segment_moves(old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
    """Whether a segment's content can now match more people ("add"), fewer ("remove"), or both."""
    moves = set()
    old_in, new_in = set(old.get("included_keys", [])), set(new.get("included_keys", []))
    old_out, new_out = set(old.get("excluded_keys", [])), set(new.get("excluded_keys", []))
    if new_in - old_in or old_out - new_out:
        moves.add("add")
    if old_in - new_in or new_out - old_out:
        moves.add("remove")
    if old.get("rules") != new.get("rules"):
        moves |= {"add", "remove"}
    return moves


_FLIP = {"add": "remove", "remove": "add"}


def _clause_moves(clauses: Sequence[Mapping[str, Any]], moved: Mapping[str, set[str]]) -> tuple[set[str], list[str]]:
    """How a list of clauses can move when the segments in `moved` move (a negated clause
    turns a segment that grows into a clause that matches fewer people)."""
    moves: set[str] = set()
    names: list[str] = []
    for clause in clauses:
        if clause.get("op") != "in_segment":
            continue
        for key in clause.get("values") or []:
            for move in moved.get(key, ()):
                moves.add(_FLIP[move] if clause.get("negate") else move)
                names.append(key)
    return moves, names


def _segment_reasons(old_segments: Mapping[str, Any], new_segments: Mapping[str, Any], targeting: Mapping[str, Any],
                     ranks: Mapping[str, int], fallback: str) -> list[PolicyReason]:
    """A segment whose content changed moves people into or out of the rules that reach it.
    Into a rule that serves anything but the fallback widens that variation's audience; out
    of a rule lets them fall through to later rules and the default, which raises risk when
    those can serve something riskier than the rule did."""
    moved = {key: _segment_moves(old_segments[key], new) for key, new in new_segments.items()
             if key in old_segments and old_segments[key] != new}
    moved = {key: moves for key, moves in moved.items() if moves}
    if not moved:
        return []
    # Segments that refer to moved segments move too (the services refuse cycles).
    changed = True
    while changed:
        changed = False
        for key, segment in new_segments.items():
            for rule in segment.get("rules") or []:
                moves, _ = _clause_moves(rule.get("clauses") or [], moved)
                if moves - moved.get(key, set()):
                    moved[key] = moved.get(key, set()) | moves
                    changed = True
    reasons = []
    rules = list(targeting.get("rules") or [])
    for index, rule in enumerate(rules):
        moves, names = _clause_moves(rule.get("clauses") or [], moved)
        if not moves:
            continue
        label, via = _rule_label(rule, index), ", ".join(sorted(set(names)))
        serves = set(_serve_weights(rule.get("serve")))
        if "add" in moves and serves - {fallback}:
            reasons.append(PolicyReason(
                "segment_widened",
                f"segment {via} can now bring more people into {label}, which serves {', '.join(sorted(serves))}"))
        if "remove" in moves:
            fall_to = set(_serve_weights(targeting.get("default_serve")))
            for later in rules[index + 1:]:
                fall_to |= set(_serve_weights(later.get("serve")))
            served_risk = min((_risk(ranks, v) for v in serves), default=0)
            riskier = [v for v in fall_to if _risk(ranks, v) > served_risk]
            if riskier:
                worst = max(riskier, key=lambda v: _risk(ranks, v))
                reasons.append(PolicyReason(
                    "segment_narrowed",
                    f"segment {via} can now leave people out of {label}: they can get {_describe(worst, ranks)}"))
    return reasons
