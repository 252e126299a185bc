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


def diff(before: Any, after: Any) -> list[Change]:
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    _flatten(before if before is not None else {}, "", old)
    _flatten(after if after is not None else {}, "", new)
    changes = []
    for path in list(dict.fromkeys([*old, *new])):
        a, b = old.get(path, _MISSING), new.get(path, _MISSING)
        if a == b:
            continue
        kind = "added" if a is _MISSING else "removed" if b is _MISSING else "changed"
        changes.append(Change(path=path or "(value)", before=_show(a), after=_show(b), kind=kind))
    return changes
