"""What rollout plans do when change control announces something
(settings.CHANGE_CONTROL_OBSERVERS; see rollouts.change_control.observers)."""

from __future__ import annotations

from rollouts.change_control.observers import FlagsStopped, RequestClosed
from rollouts.plans.transitions import pause_stopped_plans, sync_plans_waiting_on


def change_request_closed(closed: RequestClosed) -> None:
    """A plan waiting on the request moves (or forgets it) right after the commit, not at the
    next guardrail sweep (which would also do it)."""
    sync_plans_waiting_on(closed.change_request_id)


def flags_stopped(stopped: FlagsStopped) -> None:
    """Stopping flags stops their rollouts too, in the same transaction."""
    pause_stopped_plans(flag_ids=list(stopped.flag_ids), environment_id=stopped.environment_id, actor=stopped.actor,
                        reason=stopped.reason)
