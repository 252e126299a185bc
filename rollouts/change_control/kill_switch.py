"""The kill switch: operators send a flag in one environment to its fallback at once."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from audit.constants import AuditAction
from audit.services import record
from flags import services as flag_services
from flags.models import Targeting
from flags.permissions import FLIP_KILL_SWITCH
from notifications.services import notify
from rollouts.actors import require_reason
from rollouts.change_control import observers
from rollouts.change_control.follow_ups import open_follow_up
from rollouts.change_control.notices import owners_and_approvers
from rollouts.change_control.wording import flag_url
from rollouts.models import FollowUp


@transaction.atomic
def killswitch_flip(*, targeting: Targeting, reason: str, actor: AbstractBaseUser) -> Targeting:
    """Operators send a flag in one environment to its fallback at once, with a reason:
    making things safer never waits for an approval. The flag's owner and the approvers hear
    of it, and a follow-up review item stays open until someone acknowledges it."""
    targeting = Targeting.objects.select_related("flag__owner_user", "flag__fallback_variation",
                                                 "environment__project").get(pk=targeting.pk)
    project = targeting.environment.project
    flag = targeting.flag
    FLIP_KILL_SWITCH.require(actor, project)
    reason = require_reason(reason)
    if not targeting.enabled:
        raise ValidationError(f"{flag.key} is already off in {targeting.environment.name}: everyone gets the "
                              f"fallback {flag.fallback_variation.key}.")
    updated = flag_services.targeting_update(targeting=targeting, actor=actor, enabled=False,
                                             reason=f"Kill switch: {reason}")
    observers.flags_stopped(flag_ids=[flag.pk], environment_id=targeting.environment_id, actor=actor,
                            reason=f"Kill switch: {reason}")
    record(actor=actor, action=AuditAction.KILLSWITCH_FLIPPED, target=flag, project=project,
           environment=targeting.environment, flag=flag, after={"enabled": False},
           reason=reason, summary=f"Kill switch: {flag.key} sent to its fallback in {targeting.environment.name}")
    title = f"Kill switch: {flag.key} sent to {flag.fallback_variation.key} in {targeting.environment.name}"
    open_follow_up(project=project, environment=targeting.environment, kind=FollowUp.Kind.KILLSWITCH, title=title,
                   reason=reason, actor=actor, flag=flag)
    notify(recipients=[u for u in owners_and_approvers(project, [flag]) if u.pk != actor.pk], kind="killswitch.flipped",
           title=title, body=f"{actor.get_username()}: {reason}", url=flag_url(flag))
    return updated
