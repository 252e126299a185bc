from __future__ import annotations

from django.db.models import QuerySet

from flags.models import Project
from identity.models import GroupRoleRule, IdpGrant


def project_rules(project: Project) -> QuerySet[GroupRoleRule]:
    return GroupRoleRule.objects.filter(project=project).order_by("group", "role")


def all_rules() -> QuerySet[GroupRoleRule]:
    return GroupRoleRule.objects.select_related("project").order_by("project__name", "group", "role")


def idp_granted(project: Project) -> set[tuple[int, str]]:
    """(user id, role) of the project's memberships the identity provider granted."""
    return set(IdpGrant.objects.filter(membership__project=project)
               .values_list("membership__user_id", "membership__role"))
