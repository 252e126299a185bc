"""Who acts in rollouts, and why: the one home of the helpers every change-control and
rollout-plan service uses for its `actor` (a person, or a `SystemActor` such as the
scheduler) and for the reason a person gives.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError

from audit.services import Actor
from audit.validators import check_text_limit


def user_of(actor: Actor) -> AbstractBaseUser | None:
    """The person behind `actor`, or None for a system actor."""
    return actor if isinstance(actor, AbstractBaseUser) else None


def actor_label(actor: Actor) -> str:
    """How `actor` is named on rows that outlive it."""
    return actor.get_username() if isinstance(actor, AbstractBaseUser) else str(actor)


def require_reason(reason: str, *, kept: str = "with the change in the audit trail", limit: str = "reason") -> str:
    """A reason is required (not blank) and within its text limit; returns it stripped.
    `kept` says where it stays, `limit` names its TEXT_LIMITS entry."""
    if not reason or not reason.strip():
        raise ValidationError({"reason": f"Say why: the reason stays {kept}."})
    check_text_limit("reason", reason, limit=limit)
    return reason.strip()
