"""Follow-ups: a move to the fallback (kill switch, incident mode, an operator's roll-back)
stays open for review until a second person acknowledges it with a note.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import record
from audit.validators import check_text_limit
from flags.models import Environment, Flag, Project, Targeting
from flags.permissions import ACKNOWLEDGE
from notifications.services import notify
from rollouts.change_control.notices import owners_and_approvers
from rollouts.change_control.wording import flag_url
from rollouts.models import FollowUp, Incident


def open_follow_up(*, project: Project, environment: Environment, kind: str, title: str, reason: str,
                   actor: AbstractBaseUser, flag: Flag | None = None, incident: Incident | None = None) -> FollowUp:
    return FollowUp.objects.create(project=project, environment=environment, flag=flag, incident=incident, kind=kind,
                                   title=title, reason=reason, opened_by=actor, opened_by_label=actor.get_username())


def operator_rollback_follow_up(targeting: Targeting, reason: str, actor: AbstractBaseUser) -> None:
    """An operator's roll-back (a split back to the baseline, a rule removed) applies at once;
    like the kill switch it tells the owner and approvers and leaves a follow-up."""
    flag, environment = targeting.flag, targeting.environment
    title = f"Rolled back: {flag.key} moved towards its fallback in {environment.name}"
    open_follow_up(project=environment.project, environment=environment, kind=FollowUp.Kind.ROLLBACK, title=title,
                   reason=reason.strip(), actor=actor, flag=flag)
    notify(recipients=[u for u in owners_and_approvers(environment.project, [flag]) if u.pk != actor.pk],
           kind="rollback.applied", title=title, body=f"{actor.get_username()}: {reason.strip()}", url=flag_url(flag))


@transaction.atomic
def follow_up_acknowledge(*, follow_up: FollowUp, note: str, actor: AbstractBaseUser) -> FollowUp:
    """A second person reviews a move to the fallback: what happened, what comes next."""
    follow_up = FollowUp.objects.select_for_update(of=("self",)).select_related("project", "environment", "flag").get(
        pk=follow_up.pk)
    ACKNOWLEDGE.require(actor, follow_up.project)
    if follow_up.acknowledged_at is not None:
        raise ValidationError("This follow-up was acknowledged already.")
    if follow_up.opened_by_id == actor.pk:
        raise ValidationError("A second person reviews what was done: someone else must acknowledge this.")
    note = (note or "").strip()
    if not note:
        raise ValidationError({"note": "Say what was found and what happens next."})
    check_text_limit("note", note)
    follow_up.acknowledged_at = timezone.now()
    follow_up.acknowledged_by = actor
    follow_up.note = note
    follow_up.save(update_fields=["acknowledged_at", "acknowledged_by", "note"])
    record(actor=actor, action=AuditAction.FOLLOW_UP_ACKNOWLEDGED, target=follow_up, project=follow_up.project,
           environment=follow_up.environment, flag=follow_up.flag, after={"note": note}, reason=note,
           summary=f"Acknowledged: {follow_up.title}")
    return follow_up
