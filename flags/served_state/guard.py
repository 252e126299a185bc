"""The served-state guard: the one place that decides whether a write may change what a
governed environment serves.

Every catalog service that can change a served state (targeting, variations, the flag's
fallback and schema, segments) opens `governed_write()` and *touches* what it is about to
change before it locks or reads anything else. A touch takes the locks, in one order for
every path, and remembers the served state of each governed (flag, environment) it can
affect:

    flag rows (by id)  →  the project row FOR SHARE  →  targeting / variation rows
    segment writes: the project row FOR UPDATE (and no flag lock after it)

so a segment edit and a targeting or variation edit of the same project never interleave,
two edits of one flag queue on the flag row, and nothing can deadlock on the order.

When the outermost scope ends (still inside the write's transaction) the guard recomputes
those served states and compares: an unchanged state passes; a change covered by an
`Authorization` (an approved change request, or incident mode restoring what was serving)
must produce exactly the authorised hash; any other change must raise no risk under
`classify_served_change`. Otherwise `GovernanceError` is raised and the transaction rolls
back. Callers that can route a change through approval (rollouts.change_control) ask first, with
`served_states(..., overrides=...)`, so people meet a change request, not this error; the
guard is what makes every other path (the admin, commands, imports, jobs, a forgotten view)
unable to skip it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection

from flags.evaluation.targeting_schema import referenced_segments
from flags.models import Flag, Segment, Targeting, Variation
from flags.served_state.policy import PolicyReason, classify_served_change
from flags.served_state.state import build_served_state, segment_closure, served_state_hash


def pair_key(flag_id: int, environment_id: int) -> str:
    """How a (flag, environment) is named in stored approvals: "flag_id:environment_id"."""
    return f"{flag_id}:{environment_id}"


@dataclass(frozen=True)
class ServedState:
    flag_id: int
    environment_id: int
    flag_key: str
    environment_name: str
    state: dict[str, Any]
    hash: str

    @property
    def key(self) -> str:
        return pair_key(self.flag_id, self.environment_id)


@dataclass
class Overrides:
    """A hypothetical change, to see the served state it would produce without writing it.
    `targeting`: pair key → whole targeting; `variations`: flag id → {key: (value, risk rank)}
    (merged over the stored ones); `fallback` / `json_schema`: flag id → new value;
    `segments`: segment key → new content (included_keys, excluded_keys, rules)."""

    targeting: dict[str, dict[str, Any]] = field(default_factory=dict)
    variations: dict[int, dict[str, tuple[Any, int]]] = field(default_factory=dict)
    fallback: dict[int, str] = field(default_factory=dict)
    json_schema: dict[int, Any] = field(default_factory=dict)
    segments: dict[str, dict[str, Any]] = field(default_factory=dict)


def served_states(*, project_id: int, flag_ids: Iterable[int] | None = None, segment_key: str | None = None,
                  environment_ids: Iterable[int] | None = None,
                  overrides: Overrides | None = None) -> dict[str, ServedState]:
    """The served state of every governed (flag, environment) of a project — of the given
    flags (in the given environments), or of those whose rules reach `segment_key` — with
    `overrides` applied. Two queries whatever the number of flags (three when segments are
    reached)."""
    overrides = overrides or Overrides()
    rows = Targeting.objects.filter(flag__project_id=project_id, environment__is_governed=True)
    if flag_ids is not None:
        rows = rows.filter(flag_id__in=list(flag_ids))
    if environment_ids is not None:
        rows = rows.filter(environment_id__in=list(environment_ids))
    rows = list(rows.values("flag_id", "environment_id", "enabled", "targets", "rules", "default_serve",
                            "assignment_unit", "flag__key", "flag__json_schema", "flag__fallback_variation__key",
                            "environment__name"))
    if not rows:
        return {}
    targetings = {}
    for row in rows:
        key = pair_key(row["flag_id"], row["environment_id"])
        targetings[key] = overrides.targeting.get(key) or {
            name: row[name] for name in ("enabled", "targets", "rules", "default_serve", "assignment_unit")}
    segments: dict[str, dict[str, Any]] = {}
    if any(t.get("enabled") and referenced_segments(t.get("rules")) for t in targetings.values()):
        segments = {key: {"included_keys": included, "excluded_keys": excluded, "rules": rules}
                    for key, included, excluded, rules in Segment.objects.filter(project_id=project_id)
                    .values_list("key", "included_keys", "excluded_keys", "rules")}
        segments.update(overrides.segments)
    variations: dict[int, dict[str, tuple[Any, int]]] = {}
    for flag_id, key, value, rank in Variation.objects.filter(
            flag_id__in={row["flag_id"] for row in rows}).values_list("flag_id", "key", "value", "risk_rank"):
        variations.setdefault(flag_id, {})[key] = (value, rank)
    found = {}
    for row in rows:
        key = pair_key(row["flag_id"], row["environment_id"])
        targeting = targetings[key]
        if segment_key is not None and not (
                targeting.get("enabled")
                and segment_key in segment_closure(referenced_segments(targeting.get("rules")), segments)):
            continue
        flag_id = row["flag_id"]
        state = build_served_state(
            targeting=targeting,
            fallback=overrides.fallback.get(flag_id, row["flag__fallback_variation__key"]),
            variations={**variations.get(flag_id, {}), **overrides.variations.get(flag_id, {})},
            segments=segments,
            json_schema=overrides.json_schema.get(flag_id, row["flag__json_schema"]),
        )
        found[key] = ServedState(flag_id, row["environment_id"], row["flag__key"], row["environment__name"], state,
                                 served_state_hash(state))
    return found


@dataclass(frozen=True)
class Authorization:
    """Served states a write may produce whatever the policy says, because someone approved
    exactly them: pair key → the approved hash. `label` names who (CR-12, incident 3)."""

    hashes: Mapping[str, str]
    label: str


@dataclass(frozen=True)
class Refusal:
    flag_key: str
    environment_name: str
    reasons: tuple[PolicyReason, ...]
    before: ServedState
    after: ServedState
    approved_hash: str | None = None  # set when an authorization covered it and the result differs

    def text(self) -> str:
        where = f"{self.flag_key} in {self.environment_name}"
        if self.approved_hash is not None:
            return f"{where}: the result differs from what was approved"
        return f"{where}: {'; '.join(r.text for r in self.reasons)}"


class GovernanceError(ValidationError):
    """A write would change what a governed environment serves in a way the policy says needs
    approval (or differently from what was approved). Nothing was written."""

    def __init__(self, refusals: list[Refusal]):
        self.refusals = refusals
        if all(r.approved_hash is not None for r in refusals):
            message = ("What this would serve differs from what was approved ("
                       + "; ".join(r.text() for r in refusals) + ").")
        else:
            message = ("This changes what a governed environment serves and needs an approved change request ("
                       + "; ".join(r.text() for r in refusals) + ").")
        super().__init__(message)

    @property
    def conflict_only(self) -> bool:
        return all(r.approved_hash is not None for r in self.refusals)


class _Scope:
    def __init__(self) -> None:
        self.before: dict[str, ServedState] = {}
        self.authorizations: list[Authorization] = []
        self.project_ids: set[int] = set()
        self._locked_flags: set[int] = set()
        self._project_locks: dict[int, str] = {}

    def touch_flags(self, *, project_id: int, flag_ids: Iterable[int],
                    environment_ids: Iterable[int] | None = None) -> None:
        """Before changing these flags (their targeting, variations, fallback or schema);
        `environment_ids` when only their targeting in those environments changes."""
        flag_ids = sorted(set(flag_ids))
        new = [pk for pk in flag_ids if pk not in self._locked_flags]
        if new and self._project_locks.get(project_id) != "update":
            list(Flag.objects.select_for_update(of=("self",)).filter(pk__in=new).order_by("pk").values_list("pk"))
        self._locked_flags.update(new)
        self._lock_project(project_id, "share")
        self._remember(project_id, served_states(project_id=project_id, flag_ids=flag_ids,
                                                 environment_ids=environment_ids))

    def touch_segment(self, *, project_id: int, segment_key: str) -> None:
        """Before changing (or deleting) a segment."""
        self._lock_project(project_id, "update")
        self._remember(project_id, served_states(project_id=project_id, segment_key=segment_key))

    def _remember(self, project_id: int, states: dict[str, ServedState]) -> None:
        self.project_ids.add(project_id)
        for key, served in states.items():
            self.before.setdefault(key, served)

    def _lock_project(self, project_id: int, mode: str) -> None:
        held = self._project_locks.get(project_id)
        if held == "update" or held == mode:
            return
        if connection.vendor == "postgresql":  # SQLite has one writer at a time anyway
            clause = "FOR UPDATE" if mode == "update" else "FOR SHARE"
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT 1 FROM flags_project WHERE id = %s {clause}", [project_id])  # noqa: S608
        self._project_locks[project_id] = mode

    def results(self) -> dict[str, ServedState]:
        """The served states now, for everything touched."""
        now: dict[str, ServedState] = {}
        if not self.before:
            return now
        flag_ids = {s.flag_id for s in self.before.values()}
        environment_ids = {s.environment_id for s in self.before.values()}
        for project_id in self.project_ids:
            now.update({k: v for k, v in served_states(project_id=project_id, flag_ids=flag_ids,
                                                       environment_ids=environment_ids).items()
                        if k in self.before})
        return now

    def check(self) -> None:
        refusals = []
        for key, after in self.results().items():
            before = self.before[key]
            approved = next((a.hashes[key] for a in self.authorizations if key in a.hashes), None)
            if approved is not None:
                if after.hash != approved:
                    refusals.append(Refusal(after.flag_key, after.environment_name, (), before, after, approved))
                continue
            if after.hash == before.hash:
                continue
            classification = classify_served_change(before=before.state, after=after.state)
            if classification.raises_risk:
                refusals.append(Refusal(after.flag_key, after.environment_name, classification.reasons, before, after))
        if refusals:
            raise GovernanceError(refusals)


_current: ContextVar[_Scope | None] = ContextVar("served_state_scope", default=None)


@contextmanager
def governed_write(*, authorization: Authorization | None = None) -> Iterator[_Scope]:
    """Wrap a write (inside its transaction). Nested scopes join the outermost one, which
    checks once at its end, so a change made of several service calls (a flag-wide request
    changing a value and the fallback) is judged as a whole."""
    outer = _current.get()
    if outer is not None:
        if authorization is not None:
            outer.authorizations.append(authorization)
        yield outer
        return
    if not connection.in_atomic_block:
        raise RuntimeError("governed_write() runs inside the transaction of the write it guards.")
    scope = _Scope()
    if authorization is not None:
        scope.authorizations.append(authorization)
    token = _current.set(scope)
    try:
        yield scope
        scope.check()
    finally:
        _current.reset(token)
