"""What an audit row's target is called today, and where its page is, resolved when the trail is
read: a change request as "CR-2: support_agent_tool_mode in Production", a rollout plan as
"rollout plan of <flag> in <environment>", with links.

Rows keep the label their target had when they were written (`target_label`, a model's
`__str__` such as "CR-2 2@3"): that snapshot is what a row says once the target is gone, and
what exports carry. For display, the app that owns a target type names it: each app may hold
an `audit_names` module whose functions are registered here with `@names("app.model")`. They
are found the way the admin finds `admin` modules, so `audit` imports no app of ours.

A namer receives every row of its target type on the page at once and answers with one query
(or none): a page costs one query per target type, never one per row. It returns names only
for targets that still exist; the others keep their recorded label.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.module_loading import autodiscover_modules

from audit.models import AuditEvent


@dataclass(frozen=True)
class TargetName:
    label: str
    url: str = ""  # empty when the target has no page of its own


Namer = Callable[[Sequence[AuditEvent]], dict[int, TargetName]]  # event id → name

_namers: dict[str, Namer] = {}


def names(*target_types: str) -> Callable[[Namer], Namer]:
    """Register the decorated function as the namer of these target types."""

    def register(namer: Namer) -> Namer:
        for target_type in target_types:
            _namers[target_type] = namer
        return namer

    return register


@functools.cache
def _discover() -> None:
    autodiscover_modules("audit_names")


def target_names(events: Sequence[AuditEvent]) -> dict[int, TargetName]:
    """The name of each row's target (event id → name), recorded labels for targets now gone."""
    _discover()
    by_namer: dict[Namer, list[AuditEvent]] = defaultdict(list)
    for event in events:
        if namer := _namers.get(event.target_type):
            by_namer[namer].append(event)
    resolved: dict[int, TargetName] = {}
    for namer, rows in by_namer.items():
        resolved.update(namer(rows))
    return {event.pk: resolved.get(event.pk) or TargetName(event.target_label) for event in events}


def target_ids(events: Sequence[AuditEvent]) -> dict[int, list[AuditEvent]]:
    """The rows by their target's integer id (rows whose target id is not an integer are left
    out: a target recorded by another key cannot be looked up by id)."""
    by_id: dict[int, list[AuditEvent]] = defaultdict(list)
    for event in events:
        if event.target_id.isascii() and event.target_id.isdigit() and len(event.target_id) <= 18:
            by_id[int(event.target_id)].append(event)
    return by_id


def named(by_id: dict[int, list[AuditEvent]], found: dict[int, TargetName]) -> dict[int, TargetName]:
    """Spread the names of found targets over the rows that name them."""
    return {event.pk: found[pk] for pk, rows in by_id.items() if pk in found for event in rows}
