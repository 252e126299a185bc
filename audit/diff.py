"""Field-by-field differences between an event's before and after; JSON objects (profiles)
are compared key by key, with dotted paths."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_MISSING = object()


@dataclass(frozen=True)
class Change:
    path: str
    before: str
    after: str
    kind: str  # "changed", "added" or "removed"


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key in value:
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def _show(value: Any) -> str:
    if value is _MISSING:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _pairs(before: Any, after: Any, *, none_is_nothing: bool = False) -> list[tuple[str, Any, Any]]:
    """(path, old value, new value) for every path whose value differs, in the order met. A
    missing side (None) is an empty object, or, with `none_is_nothing`, no path at all."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    if before is not None or not none_is_nothing:
        _flatten(before if before is not None else {}, "", old)
    if after is not None or not none_is_nothing:
        _flatten(after if after is not None else {}, "", new)
    return [(path, old.get(path, _MISSING), new.get(path, _MISSING)) for path in dict.fromkeys([*old, *new])
            if old.get(path, _MISSING) != new.get(path, _MISSING)]


def _change(path: str, a: Any, b: Any) -> Change:
    kind = "added" if a is _MISSING else "removed" if b is _MISSING else "changed"
    return Change(path=path or "(value)", before=_show(a), after=_show(b), kind=kind)


def diff(before: Any, after: Any) -> list[Change]:
    return [_change(path, a, b) for path, a, b in _pairs(before, after)]


def _blank(value: Any) -> bool:
    return value is _MISSING or value is None or (isinstance(value, dict | list | str) and not value)


def readable_diff(before: Any, after: Any) -> list[Change]:
    """The changes a person reads in the audit trail: `diff` without the rows where nothing
    visible moved, such as "(value) {} →" when a row has no before, or a key going from null to
    an empty list. Each remaining row has something on at least one side."""
    return [_change(path, a, b) for path, a, b in _pairs(before, after, none_is_nothing=True)
            if not (_blank(a) and _blank(b))]
