"""Reads for the change-control console: the approver's inbox, a flag's open requests and
follow-ups, a request with everything its page shows. Each is a fixed number of queries."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Exists, OuterRef, Prefetch, QuerySet

from flags.models import Flag, Project
from flags.permissions import projects_with, visible_projects
from rollouts.models import Approval, ChangeRequest, FollowUp, Incident

User = AbstractBaseUser | AnonymousUser


def _with_related(queryset: QuerySet[ChangeRequest]) -> QuerySet[ChangeRequest]:
    return queryset.select_related("project", "flag", "segment", "environment", "requester")


def waiting_for(user: User) -> QuerySet[ChangeRequest]:
    """Pending requests in projects where the user approves, requested by someone else, on
    whose current version the user has not decided yet."""
    if not user.is_authenticated:
        return ChangeRequest.objects.none()
    decided = Approval.objects.filter(change_request=OuterRef("pk"), approver=user, diff_hash=OuterRef("diff_hash"))
    return _with_related(
        ChangeRequest.objects.filter(status=ChangeRequest.Status.PENDING,
                                     project__in=projects_with(user, "approve_change"))
        .exclude(requester=user).exclude(Exists(decided))
    ).order_by("created_at", "id")


def waiting_count(user: User) -> int:
    return waiting_for(user).count()


def requested_by(user: User, limit: int = 50) -> list[ChangeRequest]:
    if not user.is_authenticated:
        return []
    return list(_with_related(ChangeRequest.objects.filter(requester=user)).order_by("-id")[:limit])


def recent_in_projects(user: User, limit: int = 30) -> list[ChangeRequest]:
    return list(_with_related(ChangeRequest.objects.filter(project__in=visible_projects(user)))
                .exclude(status=ChangeRequest.Status.PENDING).order_by("-updated_at", "-id")[:limit])


def open_follow_ups(user: User) -> list[FollowUp]:
    """Follow-ups this person could acknowledge: in projects where they take part in changes,
    opened by someone else."""
    if not user.is_authenticated:
        return []
    projects = (projects_with(user, "approve_change") | projects_with(user, "propose_change")
                | projects_with(user, "flip_killswitch"))
    return list(FollowUp.objects.filter(project__in=projects, acknowledged_at__isnull=True)
                .exclude(opened_by=user).select_related("project", "environment", "flag").order_by("created_at"))


def change_request_page(project: Project, pk: int) -> ChangeRequest:
    return (
        _with_related(ChangeRequest.objects.filter(project=project))
        .prefetch_related(
            Prefetch("approvals", queryset=Approval.objects.select_related("approver")),
            "comments",
        )
        .get(pk=pk)
    )


@dataclass(frozen=True)
class FlagControl:
    """What the flag page shows of change control: open requests, recent ones, open
    follow-ups and any incident mode that holds one of its environments. A fixed number of
    queries (tests/rollouts/test_change_request_pages.py counts them)."""

    open_requests: list[ChangeRequest]
    recent_requests: list[ChangeRequest]
    follow_ups: list[FollowUp]
    incidents: list[Incident]


def flag_control(flag: Flag) -> FlagControl:
    requests = list(_with_related(ChangeRequest.objects.filter(flag=flag)).order_by("-id")[:20])
    return FlagControl(
        open_requests=[r for r in requests if r.status in ChangeRequest.OPEN],
        recent_requests=[r for r in requests if r.status not in ChangeRequest.OPEN][:5],
        follow_ups=list(FollowUp.objects.filter(flag=flag, acknowledged_at__isnull=True)
                        .select_related("environment", "project", "flag", "acknowledged_by").order_by("created_at")),
        incidents=list(Incident.objects.filter(project_id=flag.project_id, lifted_at__isnull=True)
                       .select_related("environment")),
    )


def incidents_of(project: Project) -> list[Incident]:
    return list(Incident.objects.filter(project=project).select_related("environment", "started_by", "lifted_by")
                .order_by("-id")[:30])
