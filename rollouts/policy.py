"""The risk-aware approval policy's classification: compare a proposed targeting state with
the current one and say why (if at all) it raises risk. Pure Python: no Django, no database.

A change raises risk when:
- a variation with a higher risk rank than anything currently reachable becomes reachable
  by some audience (risk escalation, e.g. tool mode read_only → write for beta_accounts);
- a non-fallback variation's audience widens: targets added, a rule (or a rule's clauses)
  added, a split weight raised, the default rule moved to it;
- the flag is turned on;
- a rule is removed or moved so that its audience can fall through to a riskier variation;
- the assignment unit changes (every unit is bucketed anew).
Changes that only move traffic towards the fallback (turning off, lowering a candidate's
weight, removing targets) raise none of these: they are de-escalations.

Flag-wide changes are classified by `classify_flag_change`: the value of a variation served
anywhere, the fallback variation, the JSON Schema or the value type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
