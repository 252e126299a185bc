"""A change request's proposal in words, for the people who approve it: what each audience
got before and what it gets after, with risk ranks ("tool mode for beta_accounts: read_only
(risk 1) → write (risk 4)"). Pure Python: no Django, no database (audit.diff is pure too)."""

from __future__ import annotations

import difflib
import json
from collections import Counter
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


def _keys_label(keys: Sequence[str], shown: int = 20) -> str:
    """A key list in a line: the first `shown`, then how many more (a list of thousands stays one line)."""
    head = ", ".join(keys[:shown])
    return head + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def _rule_name(rule: Mapping[str, Any], index: int) -> str:
    return str(rule.get("id") or f"#{index + 1}")


def _match_rules(old_rules: Sequence[Mapping[str, Any]], new_rules: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """new index → old index of the same rule: by id where each list names it once, then by
    audience (identical clauses) among the rest. What stays unmatched was added or removed."""
    def unique_ids(rules: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        counts = Counter(str(r.get("id")) for r in rules if r.get("id"))
        return {str(r["id"]): i for i, r in enumerate(rules) if r.get("id") and counts[str(r["id"])] == 1}

    old_ids, new_ids = unique_ids(old_rules), unique_ids(new_rules)
    matched = {j: old_ids[rule_id] for rule_id, j in new_ids.items() if rule_id in old_ids}
    taken = set(matched.values())
    by_signature: dict[str, list[int]] = {}
    for i, rule in enumerate(old_rules):
        if i not in taken:
            by_signature.setdefault(_signature(rule), []).append(i)
    for j, rule in enumerate(new_rules):
        if j not in matched and (candidates := by_signature.get(_signature(rule))):
            matched[j] = candidates.pop(0)
    return matched


def _rule_lines(base: Mapping[str, Any], proposed: Mapping[str, Any], words: _Words, noun: str,
                fallback_serve: Mapping[str, Any]) -> list[DiffLine]:
    """Rules matched old to new (`_match_rules`): each new, removed or changed one (audience,
    description, what it serves) in a line, and a line when the kept ones changed order."""
    old_rules: Sequence[Mapping[str, Any]] = base.get("rules") or []
    new_rules: Sequence[Mapping[str, Any]] = proposed.get("rules") or []
    matched = _match_rules(old_rules, new_rules)
    rest_before = base.get("default_serve") if base.get("enabled") else fallback_serve
    rest_after = proposed.get("default_serve") if proposed.get("enabled") else fallback_serve
    lines: list[DiffLine] = []
    for j, rule in enumerate(new_rules):
        audience = _audience(rule)
        i = matched.get(j)
        if i is None:
            # The audience used to fall through to the default rule.
            lines.append(DiffLine(
                f"{noun} for {audience} (new rule): {words.serve(rest_before)} → {words.serve(rule.get('serve'))}",
                escalates=words.risk(rule.get("serve")) > words.risk(rest_before)))
            continue
        previous = old_rules[i]
        if _signature(previous) != _signature(rule):
            lines.append(DiffLine(
                f"Audience of rule {_rule_name(rule, j)}: {_audience(previous)} → {audience} "
                f"(served {words.serve(rule.get('serve'))})",
                escalates=words.risk(rule.get("serve")) > words.risk(rest_after)))
        if (previous.get("description") or "") != (rule.get("description") or ""):
            lines.append(DiffLine(f"Description of rule {_rule_name(rule, j)} ({audience}): "
                                  f"“{previous.get('description') or ''}” → “{rule.get('description') or ''}”"))
        if previous.get("serve") != rule.get("serve"):
            lines.append(DiffLine(
                f"{noun} for {audience}: {words.serve(previous.get('serve'))} → {words.serve(rule.get('serve'))}",
                escalates=words.risk(rule.get("serve")) > words.risk(previous.get("serve"))))
    kept = set(matched.values())
    for i, rule in enumerate(old_rules):
        if i not in kept:
            lines.append(DiffLine(
                f"Rule for {_audience(rule)} removed: {words.serve(rule.get('serve'))} → "
                f"falls through to {words.serve(rest_after)}",
                escalates=words.risk(rest_after) > words.risk(rule.get("serve"))))
    order = [matched[j] for j in sorted(matched)]
    if order != sorted(order):
        lines.append(DiffLine("Rules reordered: now " + ", ".join(_audience(new_rules[j]) for j in sorted(matched))))
    return lines


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
                                  f"+ {_keys_label(added)}", escalates=int(risk_ranks.get(variation, 0)) > 0))
        if removed:
            lines.append(DiffLine(f"Individual targets for {variation}: − {_keys_label(removed)}"))

    lines.extend(_rule_lines(base, proposed, words, noun, fallback_serve))

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


def _targeting_part(state: Mapping[str, Any]) -> dict[str, Any]:
    if not state.get("enabled"):
        return {"enabled": False, "targets": [], "rules": [], "default_serve": None,
                "assignment_unit": state.get("assignment_unit")}
    return {name: state.get(name) for name in ("enabled", "targets", "rules", "default_serve", "assignment_unit")}


def describe_served_change(*, before: Mapping[str, Any], after: Mapping[str, Any], surface: str = "") -> list[DiffLine]:
    """What one governed environment serves, before and after, in words: the fallback, on/off,
    targets, rules and default (as `describe_targeting_change`), who joins or leaves each
    segment the rules reach, the values and risk ranks of the variations it can serve, and
    the JSON Schema. `before` and `after` are served states (flags/served_state/state.py)."""
    ranks = {key: int(v.get("risk_rank") or 0) for key, v in (before.get("variations") or {}).items()}
    ranks.update({key: int(v.get("risk_rank") or 0) for key, v in (after.get("variations") or {}).items()})
    lines: list[DiffLine] = []
    old_fallback, new_fallback = before.get("fallback"), after.get("fallback")
    if old_fallback != new_fallback:
        lines.append(DiffLine(
            f"Fallback (served to everyone when the flag is off): {old_fallback} (risk {ranks.get(old_fallback, 0)}) "
            f"→ {new_fallback} (risk {ranks.get(new_fallback, 0)})",
            escalates=ranks.get(new_fallback, 0) > ranks.get(old_fallback, 0) and not after.get("enabled")))
    if before.get("enabled") and not after.get("enabled"):
        lines.append(DiffLine(f"Turned off: everyone gets the fallback {new_fallback} "
                              f"(risk {ranks.get(new_fallback, 0)})"))
    else:
        base, proposed = _targeting_part(before), _targeting_part(after)
        if not before.get("enabled"):
            base["assignment_unit"] = proposed["assignment_unit"]  # an off flag buckets nobody: no unit to compare
        lines.extend(describe_targeting_change(base=base, proposed=proposed, risk_ranks=ranks,
                                               fallback=str(new_fallback), surface=surface))
    old_segments, new_segments = before.get("segments") or {}, after.get("segments") or {}
    for key in sorted(set(old_segments) & set(new_segments)):
        lines.extend(describe_segment_change(key=key, base=old_segments[key], proposed=new_segments[key]))
    old_variations, new_variations = before.get("variations") or {}, after.get("variations") or {}
    for key in sorted(set(old_variations) & set(new_variations)):
        old, new = old_variations[key], new_variations[key]
        if old.get("value") != new.get("value"):
            if isinstance(old.get("value"), dict) and isinstance(new.get("value"), dict):
                for change in diff(old["value"], new["value"]):
                    lines.append(DiffLine(f"Value of {key}: {change.path} {change.before or '∅'} → "
                                          f"{change.after or '∅'}"))
            else:
                lines.append(DiffLine(f"Value of {key}: {json.dumps(old.get('value'), ensure_ascii=False)} → "
                                      f"{json.dumps(new.get('value'), ensure_ascii=False)}"))
        if old.get("risk_rank") != new.get("risk_rank"):
            lines.append(DiffLine(f"Risk rank of {key}: {old.get('risk_rank')} → {new.get('risk_rank')}",
                                  escalates=int(new.get("risk_rank") or 0) > int(old.get("risk_rank") or 0)))
    if before.get("json_schema") != after.get("json_schema"):
        changes = diff(before.get("json_schema") or {}, after.get("json_schema") or {})
        lines.append(DiffLine(f"JSON Schema: {len(changes)} change(s): "
                              + "; ".join(f"{c.path} {c.before or '∅'} → {c.after or '∅'}" for c in changes[:6])
                              + (" …" if len(changes) > 6 else "")))
    return lines


def as_json(value: Any) -> str:
    """Real JSON for people: indented, keys sorted (so two states line up), text as it is."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class JsonLine:
    """One line of a JSON diff: `kind` is "added", "removed", "same" or "gap" (lines left out)."""

    kind: str
    text: str


def json_line_diff(before: Any, after: Any, context: int = 3) -> list[JsonLine]:
    """A unified line diff of two JSON values (`as_json`), `context` unchanged lines around
    each change; empty when they are equal."""
    old, new = as_json(before).splitlines(), as_json(after).splitlines()
    lines: list[JsonLine] = []
    for group in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_grouped_opcodes(context):
        if lines:
            lines.append(JsonLine("gap", "…"))
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                lines.extend(JsonLine("same", text) for text in old[i1:i2])
                continue
            lines.extend(JsonLine("removed", text) for text in old[i1:i2])
            lines.extend(JsonLine("added", text) for text in new[j1:j2])
    return lines
