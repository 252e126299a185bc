"""The served state of a flag in an environment: everything that decides what that environment
can serve and to whom, as one plain JSON value with a stable hash. Pure Python: no Django.

- Off: only the fallback is served, so the state is the fallback (key, value, risk rank) and
  the JSON Schema; rules, targets and the default of an off flag decide nothing.
- On: the targeting (individual targets, ordered rules, default serve, assignment unit), the
  content of every segment the rules reach (transitively, through other segments' rules),
  every reachable variation's value and risk rank, the fallback, and the JSON Schema.

Approvals bind the hash of the state a change produces; the guard (`guard.py`) recomputes it
under locks before anything commits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from flags.evaluation.targeting_schema import referenced_segments, served_variations

TARGETING_FIELDS = ("enabled", "targets", "rules", "default_serve", "assignment_unit")


def reachable_variations(targeting: Mapping[str, Any], fallback: str) -> set[str]:
    """The variations a targeting can serve: the fallback always, and when on, every target,
    rule and default serve (split buckets included, even at weight 0: a later weight change
    only moves traffic between them)."""
    found = {fallback}
    if not targeting.get("enabled"):
        return found
    found |= served_variations(targeting.get("default_serve"))
    for rule in targeting.get("rules") or []:
        found |= served_variations(rule.get("serve"))
    found |= {t["variation"] for t in targeting.get("targets") or []}
    return found


def segment_closure(keys: set[str], segments: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The segments named by `keys` and, transitively, by their rules."""
    found: set[str] = set()
    stack = list(keys)
    while stack:
        key = stack.pop()
        if key in found:
            continue
        found.add(key)
        if key in segments:
            stack.extend(referenced_segments(segments[key].get("rules")))
    return found


def _segment_content(segment: Mapping[str, Any]) -> dict[str, Any]:
    # Key lists are sets to the engine: their order decides nothing, so it is not hashed.
    return {
        "included_keys": sorted(segment.get("included_keys") or []),
        "excluded_keys": sorted(segment.get("excluded_keys") or []),
        "rules": segment.get("rules") or [],
    }


def build_served_state(
    *,
    targeting: Mapping[str, Any],
    fallback: str,
    variations: Mapping[str, tuple[Any, int]],
    segments: Mapping[str, Mapping[str, Any]],
    json_schema: Any,
) -> dict[str, Any]:
    """`variations`: key → (value, risk rank) of every variation of the flag; `segments`: the
    project's segments by key (only those reached are kept)."""
    enabled = bool(targeting.get("enabled"))
    reachable = reachable_variations(targeting, fallback)
    state: dict[str, Any] = {
        "enabled": enabled,
        "fallback": fallback,
        "json_schema": json_schema,
        "variations": {
            key: {"value": variations[key][0], "risk_rank": variations[key][1]}
            for key in sorted(reachable) if key in variations
        },
    }
    if enabled:
        state["targets"] = [
            {"variation": t["variation"], "values": sorted(t.get("values") or [])}
            for t in targeting.get("targets") or []
        ]
        state["rules"] = list(targeting.get("rules") or [])
        state["default_serve"] = targeting.get("default_serve")
        state["assignment_unit"] = targeting.get("assignment_unit")
        reached = segment_closure(referenced_segments(state["rules"]), segments)
        state["segments"] = {key: _segment_content(segments[key]) for key in sorted(reached) if key in segments}
    return state


def served_state_hash(state: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces): equal states, equal hashes."""
    text = json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def targeting_of(state: Mapping[str, Any]) -> dict[str, Any]:
    """The targeting part of a served state, in the shape the targeting policy compares."""
    if not state.get("enabled"):
        return {"enabled": False, "targets": [], "rules": [], "default_serve": None, "assignment_unit": None}
    return {name: state.get(name) for name in TARGETING_FIELDS}
