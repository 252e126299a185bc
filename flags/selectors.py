"""Non-trivial reads of the catalog, shaped so that pages never query per row."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import Count, Prefetch, Q, QuerySet

from flags.models import Flag, Project, Segment, Tag, Targeting
from flags.permissions import User, visible_projects


def project_list_for(user: User) -> QuerySet[Project]:
    return visible_projects(user).annotate(
        flag_count=Count("flags", distinct=True), environment_count=Count("environments", distinct=True)
    ).order_by("name")


@dataclass(frozen=True)
class FlagFilters:
    q: str = ""
    surface: str = ""
    owner: str = ""
    stage: str = ""
    tag: str = ""

    @property
    def active(self) -> bool:
        return any((self.q, self.surface, self.owner, self.stage, self.tag))


def flag_list(project: Project, filters: FlagFilters) -> QuerySet[Flag]:
    flags = (
        Flag.objects.filter(project=project)
        .select_related("owner_user", "fallback_variation")
        .prefetch_related(
            "tags",
            Prefetch(
                "targetings",
                queryset=Targeting.objects.select_related("environment").order_by("environment__sort_order"),
            ),
        )
        .order_by("key")
    )
    if filters.q:
        flags = flags.filter(Q(key__icontains=filters.q) | Q(name__icontains=filters.q))
    if filters.surface:
        flags = flags.filter(behavior_surface=filters.surface)
    if filters.stage:
        flags = flags.filter(stage=filters.stage)
    if filters.tag:
        flags = flags.filter(tags__name=filters.tag)
    if filters.owner:
        if filters.owner.startswith("team:"):
            flags = flags.filter(owner_team=filters.owner.removeprefix("team:"))
        elif filters.owner.startswith("user:") and filters.owner[5:].isascii() and filters.owner[5:].isdigit() \
                and len(filters.owner) < 24:
            flags = flags.filter(owner_user_id=int(filters.owner[5:]))
        else:
            flags = flags.none()
    return flags.distinct()


def owner_choices(project: Project) -> list[tuple[str, str]]:
    """Owners that appear on the project's flags: people and teams."""
    users = get_user_model().objects.filter(owned_flags__project=project).distinct().order_by("username")
    teams = (
        Flag.objects.filter(project=project).exclude(owner_team="")
        .values_list("owner_team", flat=True).distinct().order_by("owner_team")
    )
    return [(f"user:{u.pk}", u.get_full_name() or u.get_username()) for u in users] + [
        (f"team:{t}", f"Team {t}") for t in teams
    ]


def tag_names(project: Project) -> list[str]:
    return list(Tag.objects.filter(project=project).values_list("name", flat=True).order_by("name"))


def flag_detail(project: Project, key: str) -> Flag:
    return (
        Flag.objects.select_related("project", "owner_user", "fallback_variation", "created_by")
        .prefetch_related(
            "tags",
            "variations",
            Prefetch(
                "targetings",
                queryset=Targeting.objects.select_related("environment", "updated_by").order_by(
                    "environment__sort_order", "environment__key"
                ),
            ),
        )
        .get(project=project, key=key)
    )


def segment_list(project: Project) -> QuerySet[Segment]:
    return Segment.objects.filter(project=project).order_by("key")
