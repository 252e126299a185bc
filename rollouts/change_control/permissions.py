"""Who may take part in change control: propose, carry (apply or schedule) an approved
request, approve, comment or acknowledge. Views ask before calling a service; the services
that take people's decisions ask again.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from flags.models import Flag, Project
from flags.permissions import can_edit_catalog, has_project_permission, holders_of
from rollouts.models import ChangeRequest


def may_propose(user: AbstractBaseUser, flag: Flag) -> bool:
    """Flag owners and editors propose any change; operators only move traffic to the fallback."""
    return (has_project_permission(user, flag.project, "propose_change")
            or can_edit_catalog(user, flag.project, flag))


def may_carry(user: AbstractBaseUser, change_request: ChangeRequest) -> bool:
    """Who applies or schedules an approved request: the flag's owner or an editor (for a
    segment, an editor)."""
    if change_request.flag_id:
        return may_propose(user, change_request.flag)
    return (has_project_permission(user, change_request.project, "propose_change")
            or can_edit_catalog(user, change_request.project))


PARTICIPANT_PERMISSIONS = ("approve_change", "propose_change", "flip_killswitch")


def participation(user: AbstractBaseUser, project: Project) -> set[str]:
    """The permissions by which someone takes part in changes (not viewers, not auditors)."""
    return {c for c in PARTICIPANT_PERMISSIONS if has_project_permission(user, project, c)}


def approvers_other_than(project: Project, user_id: int | None) -> QuerySet[AbstractBaseUser]:
    """Who can approve what `user_id` asks for: active holders of the approver role in the
    project, never the person asking."""
    return holders_of(project, "approve_change").exclude(pk=user_id)
