"""Project roles as django-guardian object permissions, and the flag owner's permission."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, Permission
from django.core.exceptions import ValidationError
from django.db import transaction

from audit.constants import AuditAction
from audit.services import Actor, record
from audit.validators import check_text_limit
from flags.constants import FLAG_OWNER_PERMISSION, ROLE_PERMISSIONS, Role
from flags.models import Flag, FlagUserObjectPermission, Membership, Project, ProjectUserObjectPermission


def _permissions(codenames: set[str] | frozenset[str]) -> dict[str, Permission]:
    return {p.codename: p for p in Permission.objects.filter(content_type__app_label="flags", codename__in=codenames)}


def _sync_project_permissions(*, project: Project, user: AbstractBaseUser) -> None:
    """Make the user's permission rows on the project exactly the union of their roles'."""
    wanted: set[str] = set()
    for role in Membership.objects.filter(project=project, user=user).values_list("role", flat=True):
        wanted |= ROLE_PERMISSIONS[role]
    rows = ProjectUserObjectPermission.objects.filter(user=user, content_object=project)
    held = set(rows.values_list("permission__codename", flat=True))
    rows.exclude(permission__codename__in=wanted).delete()
    by_codename = _permissions(wanted - held)
    ProjectUserObjectPermission.objects.bulk_create(
        [ProjectUserObjectPermission(user=user, content_object=project, permission=perm) for perm in by_codename.values()]
    )


@transaction.atomic
def membership_grant(*, project: Project, user: AbstractBaseUser, role: Role, actor: Actor) -> Membership:
    role = Role(role)
    membership, created = Membership.objects.get_or_create(project=project, user=user, role=role)
    if created:
        _sync_project_permissions(project=project, user=user)
        record(actor=actor, action=AuditAction.ROLE_GRANTED, target=membership, project=project,
               after={"user": user.get_username(), "role": role, "permissions": sorted(ROLE_PERMISSIONS[role])},
               summary=f"Granted {role.label} to {user.get_username()}")
    return membership


@transaction.atomic
def membership_revoke(*, project: Project, user: AbstractBaseUser, role: Role, actor: Actor, reason: str = "") -> None:
    role = Role(role)
    check_text_limit("reason", reason)
    # Lock the project's admin rows so two admins cannot remove each other at once.
    admins = list(Membership.objects.select_for_update().filter(project=project, role=Role.ADMIN))
    membership = Membership.objects.select_for_update().filter(project=project, user=user, role=role).first()
    if membership is None:
        raise ValidationError(f"{user.get_username()} does not hold the {role.label} role here.")
    if role == Role.ADMIN and len(admins) == 1:
        raise ValidationError("A project keeps at least one project admin: grant the role to someone else first.")
    label = str(membership)
    membership.delete()
    _sync_project_permissions(project=project, user=user)
    record(actor=actor, action=AuditAction.ROLE_REVOKED,
           target=Membership(pk=membership.pk, project=project, user=user, role=role), project=project,
           before={"user": user.get_username(), "role": role}, reason=reason,
           summary=f"Revoked {role.label} from {user.get_username()} ({label})")


def flag_owner_permission_sync(*, flag: Flag, previous_owner_id: int | None) -> None:
    """The owner holds edit_flag on the flag; a previous owner loses it. Called by the flag
    services inside their transaction (their audit row records the owner change)."""
    if previous_owner_id == flag.owner_user_id and previous_owner_id is not None:
        return
    rows = FlagUserObjectPermission.objects.filter(content_object=flag, permission__codename=FLAG_OWNER_PERMISSION)
    if previous_owner_id is not None:
        rows.filter(user_id=previous_owner_id).delete()
    if flag.owner_user_id is not None and not rows.filter(user_id=flag.owner_user_id).exists():
        permission = Permission.objects.get(content_type__app_label="flags", codename=FLAG_OWNER_PERMISSION)
        FlagUserObjectPermission.objects.create(user_id=flag.owner_user_id, content_object=flag, permission=permission)
