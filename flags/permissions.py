"""Who may see and change what, checked on the object in every view.

Roles (flags.Membership rows) are named sets of django-guardian object permissions on the
Project (flags.constants.ROLE_PERMISSIONS); a flag's owner also holds `edit_flag` on that
flag. Checks read the permission rows directly, once per project per request, and do not
treat superusers specially: superusers administer the site, the console follows roles.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from flags.constants import FLAG_OWNER_PERMISSION, Role
from flags.models import Environment, Flag, FlagUserObjectPermission, Project, ProjectUserObjectPermission

User = AbstractBaseUser | AnonymousUser


def project_permissions(user: User, project: Project) -> frozenset[str]:
    """The permission codenames a user holds on a project; cached on the user for the request."""
    if not user.is_authenticated:
        return frozenset()
    cache: dict[int, frozenset[str]] = user.__dict__.setdefault("_featureops_project_perms", {})
    if project.pk not in cache:
        cache[project.pk] = frozenset(
            ProjectUserObjectPermission.objects.filter(user=user, content_object=project)
            .values_list("permission__codename", flat=True)
        )
    return cache[project.pk]


def has_project_permission(user: User, project: Project, codename: str) -> bool:
    return codename in project_permissions(user, project)


def _owns(user: User, flag: Flag) -> bool:
    """Owner rights need the owner to still be a member, and not only an auditor: auditors
    change nothing, even on a flag someone named them owner of."""
    if not user.is_authenticated:
        return False
    if not roles_in(user, flag.project) - {Role.AUDITOR}:
        return False
    return FlagUserObjectPermission.objects.filter(
        user=user, content_object=flag, permission__codename=FLAG_OWNER_PERMISSION).exists()


def roles_in(user: User, project: Project) -> set[str]:
    if not user.is_authenticated:
        return set()
    return set(project.memberships.filter(user=user).values_list("role", flat=True))


def projects_with(user: User, codename: str) -> QuerySet[Project]:
    if not user.is_authenticated:
        return Project.objects.none()
    return Project.objects.filter(
        pk__in=ProjectUserObjectPermission.objects.filter(user=user, permission__codename=codename)
        .values("content_object_id"))


def visible_projects(user: User) -> QuerySet[Project]:
    return projects_with(user, "view_project")


def can_view_project(user: User, project: Project) -> bool:
    return has_project_permission(user, project, "view_project")


def can_edit_catalog(user: User, project: Project, flag: Flag | None = None) -> bool:
    """Create and edit flags, variations and segments (editor role), or this flag (its owner)."""
    if has_project_permission(user, project, "edit_catalog"):
        return True
    return flag is not None and _owns(user, flag)


def can_edit_targeting(user: User, environment: Environment, flag: Flag) -> bool:
    """The plain targeting editor: non-governed environments only. Governed ones take
    proposals (rollouts), which apply at once or become change requests."""
    return not environment.is_governed and can_edit_catalog(user, environment.project, flag)


def can_manage_members(user: User, project: Project) -> bool:
    return has_project_permission(user, project, "manage_members")


def can_manage_sdk_keys(user: User, project: Project) -> bool:
    return has_project_permission(user, project, "manage_sdk_keys")


def audit_project_ids(user: User, codename: str = "view_audit") -> frozenset[int]:
    """Projects whose whole audit trail the user may browse (view_audit) or export (export_audit):
    auditors' and project admins'."""
    return frozenset(projects_with(user, codename).values_list("pk", flat=True))


def sees_account_events(user: User) -> bool:
    """Whether the user may read the audit rows that belong to no project: sign-ins (failed and
    throttled ones too), sign-outs, account and group changes in the admin, exports of the whole
    trail. They concern the whole console, so view_account_audit on any one project opens them
    (the auditor role holds it; project admins do not). Superusers read them in the admin."""
    if not user.is_authenticated:
        return False
    return ProjectUserObjectPermission.objects.filter(user=user, permission__codename="view_account_audit").exists()


def role_labels(user: User, project: Project) -> list[str]:
    return [Role(role).label for role in sorted(roles_in(user, project))]


def holders_of(project: Project, codename: str) -> QuerySet:
    """The active users who hold a permission on a project (e.g. every approver, to notify)."""
    return get_user_model().objects.filter(
        is_active=True,
        pk__in=ProjectUserObjectPermission.objects.filter(content_object=project, permission__codename=codename)
        .values("user_id"),
    )
