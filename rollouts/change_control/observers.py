"""What change control announces, and who hears it: `settings.CHANGE_CONTROL_OBSERVERS`
maps each event to dotted paths of callables, as `settings.AUDIT_COMMIT_OBSERVERS` does for
audit rows. Change control knows nothing of who builds on it (rollout plans do, through
rollouts.plans.observers).

- "request_closed": a change request reached an end state (applied, conflicted, rejected,
  cancelled, withdrawn, expired). Observers are called with a `RequestClosed` after the
  commit, each on its own (`on_commit(robust=True)`: a failure is logged and the others still
  run); never for a rolled-back transition.
- "flags_stopped": a kill switch or incident mode sent flags to their fallbacks. Observers
  are called with a `FlagsStopped` at once, inside the stop's transaction, so what they do
  commits with it; they must not raise: the stop must go through.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils.module_loading import import_string

from audit.services import Actor
from rollouts.models import ChangeRequest

REQUEST_CLOSED = "request_closed"
FLAGS_STOPPED = "flags_stopped"


@dataclass(frozen=True)
class RequestClosed:
    change_request_id: int
    status: str


@dataclass(frozen=True)
class FlagsStopped:
    flag_ids: tuple[int, ...]
    environment_id: int
    actor: Actor
    reason: str


@functools.cache
def _resolve(path: str) -> Callable[..., object]:
    return import_string(path)


def _paths(event: str) -> tuple[str, ...]:
    return tuple(getattr(settings, "CHANGE_CONTROL_OBSERVERS", {}).get(event, ()))


def request_closed(change_request: ChangeRequest) -> None:
    """Announce, after the commit, that `change_request` reached an end state."""
    closed = RequestClosed(change_request.pk, change_request.status)
    for path in _paths(REQUEST_CLOSED):
        transaction.on_commit(functools.partial(_call, path, closed), robust=True)


def flags_stopped(*, flag_ids: list[int], environment_id: int, actor: Actor, reason: str) -> None:
    """Announce, inside the stop's transaction, that these flags were sent to their fallbacks."""
    stopped = FlagsStopped(tuple(flag_ids), environment_id, actor, reason)
    for path in _paths(FLAGS_STOPPED):
        _call(path, stopped)


def _call(path: str, event: RequestClosed | FlagsStopped) -> None:
    _resolve(path)(event)
