"""Who may see and change what in the catalog, checked on the object in every view.

Roles are per-project memberships (flags.models.Membership). The roles issue moves these
checks onto django-guardian object permissions; callers only use the functions below.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from flags.constants import EDITING_ROLES, Role
from flags.models import Environment, Flag, Project

User = AbstractBaseUser | AnonymousUser


def roles_in(user: User, project: Project) -> set[str]:
    """The roles a user holds in a project, cached on the user object per request."""
    if not user.is_authenticated:
        return set()
    cache: dict[int, set[str]] = user.__dict__.setdefault("_featureops_roles", {})
    if project.pk not in cache:
        cache[project.pk] = set(project.memberships.filter(user=user).values_list("role", flat=True))
    return cache[project.pk]


def visible_projects(user: User) -> QuerySet[Project]:
    if not user.is_authenticated:
        return Project.objects.none()
    return Project.objects.filter(memberships__user=user).distinct()


def can_view_project(user: User, project: Project) -> bool:
    return bool(roles_in(user, project))


def can_edit_catalog(user: User, project: Project, flag: Flag | None = None) -> bool:
    """Create and edit flags, variations and segments. A flag's owner may edit that flag
    even without the editor role."""
    if roles_in(user, project) & EDITING_ROLES:
        return True
    return flag is not None and flag.owner_user_id is not None and flag.owner_user_id == user.pk


def can_edit_targeting(user: User, environment: Environment, flag: Flag) -> bool:
    """Governed environments are read-only in the console until the approval workflow
    routes their changes through change requests."""
    return not environment.is_governed and can_edit_catalog(user, environment.project, flag)


AUDIT_ROLES = frozenset({Role.AUDITOR, Role.ADMIN})


def audit_project_ids(user: User) -> frozenset[int]:
    """Projects whose whole audit trail the user may browse and export (auditors, admins)."""
    if not user.is_authenticated:
        return frozenset()
    return frozenset(Project.objects.filter(memberships__user=user, memberships__role__in=AUDIT_ROLES)
                     .values_list("pk", flat=True))


def role_labels(user: User, project: Project) -> list[str]:
    return [Role(role).label for role in sorted(roles_in(user, project))]
