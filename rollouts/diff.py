"""A change request's proposal in words, for the people who approve it: what each audience
got before and what it gets after, with risk ranks ("tool mode for beta_accounts: read_only
(risk 1) → write (risk 4)"). Pure Python: no Django, no database (audit.diff is pure too)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from audit.diff import diff

SURFACE_NOUNS = {
    "agent_tools": "tool mode",
    "prompt_profile": "prompt profile",
    "model_route": "model route",
    "sampling_parameters": "sampling parameters",
    "retrieval_profile": "retrieval profile",
    "guardrail_mode": "guardrail mode",
    "fallback_mode": "fallback mode",
    "ai_profile": "AI profile",
}


@dataclass(frozen=True)
class DiffLine:
    """One readable change. `escalates` marks lines where the riskiest reachable variation of
    an audience goes up, so the page can draw the eye to them."""

    text: str
    escalates: bool = False


def _clauses_label(clauses: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for clause in clauses:
        values = ", ".join(str(v) for v in clause.get("values") or [])
        if clause.get("op") == "in_segment":
            parts.append(f"{'not ' if clause.get('negate') else ''}{values}")
        else:
            parts.append(f"{clause.get('attribute', '')} {clause.get('op', '')} {values}")
    return " and ".join(parts) or "everyone"


def _audience(rule: Mapping[str, Any]) -> str:
    return _clauses_label(rule.get("clauses", []))


def _signature(rule: Mapping[str, Any]) -> str:
    return json.dumps(rule.get("clauses", []), sort_keys=True)


class _Words:
    def __init__(self, ranks: Mapping[str, int]) -> None:
        self.ranks = ranks

    def risk(self, serve: Mapping[str, Any] | None) -> int:
        return max((int(self.ranks.get(v, 0)) for v in _variations(serve)), default=0)

    def serve(self, serve: Mapping[str, Any] | None) -> str:
        if not serve:
            return "nothing"
        if "variation" in serve:
            key = serve["variation"]
            return f"{key} (risk {self.ranks.get(key, 0)})"
        return " / ".join(f"{b['variation']} {int(b['weight']) / 1000:g} % (risk {self.ranks.get(b['variation'], 0)})"
                          for b in serve.get("split", []))


def _variations(serve: Mapping[str, Any] | None) -> set[str]:
    if not serve:
        return set()
    if "variation" in serve:
        return {serve["variation"]}
    return {b["variation"] for b in serve.get("split", []) if int(b.get("weight", 0)) > 0}


def describe_targeting_change(*, base: Mapping[str, Any], proposed: Mapping[str, Any], risk_ranks: Mapping[str, int],
                              fallback: str, surface: str = "") -> list[DiffLine]:
    words = _Words(risk_ranks)
    noun = SURFACE_NOUNS.get(surface, "value")
    lines: list[DiffLine] = []
    fallback_serve = {"variation": fallback}

    if bool(base.get("enabled")) != bool(proposed.get("enabled")):
        if proposed.get("enabled"):
            lines.append(DiffLine(f"Turned on: everyone stops getting the fallback {words.serve(fallback_serve)} "
                                  "and is served by the rules below", escalates=True))
        else:
            lines.append(DiffLine(f"Turned off: everyone gets the fallback {words.serve(fallback_serve)}"))

    # Individual targets, per variation.
    def targets(state: Mapping[str, Any]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for target in state.get("targets", []):
            found.setdefault(target["variation"], set()).update(target["values"])
        return found

    old_targets, new_targets = targets(base), targets(proposed)
    for variation in sorted(set(old_targets) | set(new_targets)):
        added = sorted(new_targets.get(variation, set()) - old_targets.get(variation, set()))
        removed = sorted(old_targets.get(variation, set()) - new_targets.get(variation, set()))
        if added:
            lines.append(DiffLine(f"Individual targets for {words.serve({'variation': variation})}: "
                                  f"+ {', '.join(added)}", escalates=int(risk_ranks.get(variation, 0)) > 0))
        if removed:
            lines.append(DiffLine(f"Individual targets for {variation}: − {', '.join(removed)}"))

    # Rules, matched by audience (their clauses).
    old_rules: Sequence[Mapping[str, Any]] = base.get("rules", [])
    new_rules: Sequence[Mapping[str, Any]] = proposed.get("rules", [])
    old_by_signature = {_signature(r): r for r in old_rules}
    new_by_signature = {_signature(r): r for r in new_rules}
    for rule in new_rules:
        signature = _signature(rule)
        audience = _audience(rule)
        previous = old_by_signature.get(signature)
        if previous is None:
            # The audience used to fall through to the default rule.
            before_serve = base.get("default_serve") if base.get("enabled") else fallback_serve
            lines.append(DiffLine(
                f"{noun} for {audience} (new rule): {words.serve(before_serve)} → {words.serve(rule.get('serve'))}",
                escalates=words.risk(rule.get("serve")) > words.risk(before_serve)))
        elif previous.get("serve") != rule.get("serve"):
            lines.append(DiffLine(
                f"{noun} for {audience}: {words.serve(previous.get('serve'))} → {words.serve(rule.get('serve'))}",
                escalates=words.risk(rule.get("serve")) > words.risk(previous.get("serve"))))
    for rule in old_rules:
        if _signature(rule) not in new_by_signature:
            after_serve = proposed.get("default_serve") if proposed.get("enabled") else fallback_serve
            lines.append(DiffLine(
                f"Rule for {_audience(rule)} removed: {words.serve(rule.get('serve'))} → "
                f"falls through to {words.serve(after_serve)}",
                escalates=words.risk(after_serve) > words.risk(rule.get("serve"))))
    kept_old = [s for s in (_signature(r) for r in old_rules) if s in new_by_signature]
    kept_new = [s for s in (_signature(r) for r in new_rules) if s in old_by_signature]
    if kept_old != kept_new:
        order = ", ".join(_audience(new_by_signature[s]) for s in kept_new)
        lines.append(DiffLine(f"Rules reordered: now {order}"))

    if base.get("default_serve") != proposed.get("default_serve"):
        lines.append(DiffLine(
            f"Default rule ({noun} for everyone else): {words.serve(base.get('default_serve'))} → "
            f"{words.serve(proposed.get('default_serve'))}",
            escalates=words.risk(proposed.get("default_serve")) > words.risk(base.get("default_serve"))))
    if base.get("assignment_unit") != proposed.get("assignment_unit"):
        lines.append(DiffLine(f"Assignment unit: {base.get('assignment_unit')} → {proposed.get('assignment_unit')} "
                              "(every unit is bucketed anew)"))
    return lines


def describe_flag_change(*, base: Mapping[str, Any], proposed: Mapping[str, Any], risk_ranks: Mapping[str, int],
                         served: set[str], governed_names: Sequence[str]) -> list[DiffLine]:
    """Flag-wide changes: variation values (JSON compared key by key), the fallback, the
    schema. They reach every environment at once."""
    where = ", ".join(governed_names) or "a governed environment"
    lines: list[DiffLine] = []
    for key, value in sorted(proposed.get("variations", {}).items()):
        old = base.get("variations", {}).get(key)
        served_note = f" (served in {where})" if key in served else ""
        if isinstance(old, dict) and isinstance(value, dict):
            for change in diff(old, value):
                lines.append(DiffLine(f"Value of {key}{served_note}: {change.path} {change.before or '∅'} → "
                                      f"{change.after or '∅'}"))
        else:
            lines.append(DiffLine(f"Value of {key}{served_note}: {json.dumps(old)} → {json.dumps(value)}"))
    if "fallback_variation" in proposed:
        old, new = base.get("fallback_variation"), proposed["fallback_variation"]
        lines.append(DiffLine(
            f"Fallback (served to everyone when the flag is off, in {where} too): {old} (risk {risk_ranks.get(old, 0)}) "
            f"→ {new} (risk {risk_ranks.get(new, 0)})",
            escalates=int(risk_ranks.get(new, 0)) > int(risk_ranks.get(old, 0))))
    for key, rank in sorted(proposed.get("risk_ranks", {}).items()):
        lines.append(DiffLine(f"Risk rank of {key}: {base.get('risk_ranks', {}).get(key)} → {rank} "
                              "(approvals are counted by risk)", escalates=True))
    if "json_schema" in proposed:
        changes = diff(base.get("json_schema") or {}, proposed.get("json_schema") or {})
        lines.append(DiffLine(f"JSON Schema: {len(changes)} change(s): "
                              + "; ".join(f"{c.path} {c.before or '∅'} → {c.after or '∅'}" for c in changes[:6])
                              + (" …" if len(changes) > 6 else "")))
    return lines


def describe_segment_change(*, key: str, base: Mapping[str, Any], proposed: Mapping[str, Any]) -> list[DiffLine]:
    """A segment edit in words: who joins, who leaves, rules changed."""
    lines = []
    for field, joins, leaves in (("included_keys", "included", "no longer included"),
                                 ("excluded_keys", "excluded", "no longer excluded")):
        old, new = set(base.get(field) or []), set(proposed.get(field) or [])
        for verb, keys in ((joins, new - old), (leaves, old - new)):
            if keys:
                shown = ", ".join(sorted(keys)[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
                lines.append(DiffLine(f"segment {key}: {len(keys)} key(s) {verb}: {shown}"))
    if (base.get("rules") or []) != (proposed.get("rules") or []):
        old_rules = "; ".join(_clauses_label(r.get("clauses", [])) for r in base.get("rules") or []) or "none"
        new_rules = "; ".join(_clauses_label(r.get("clauses", [])) for r in proposed.get("rules") or []) or "none"
        lines.append(DiffLine(f"segment {key}: rules {old_rules} → {new_rules}"))
    for field in ("name", "description"):
        if base.get(field) != proposed.get(field):
            lines.append(DiffLine(f"segment {key}: {field} “{base.get(field)}” → “{proposed.get(field)}”"))
    return lines
