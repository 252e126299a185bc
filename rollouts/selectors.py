"""Reads for the change-control console: the approver's inbox, a flag's open requests and
follow-ups, a request with everything its page shows. Each is a fixed number of queries."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Exists, OuterRef, Prefetch, QuerySet
from django.utils import timezone

from flags.evaluation.targeting_schema import referenced_segments
from flags.models import Environment, Flag, Project, Segment, Targeting, Variation
from flags.permissions import projects_with, visible_projects
from flags.served_state.guard import Overrides, pair_key, served_states
from flags.served_state.state import build_served_state, served_state_hash
from rollouts import impact
from rollouts.change_control import incident_mode
from rollouts.diff import DiffLine, JsonLine, as_json, describe_served_change, json_line_diff
from rollouts.models import Approval, ChangeRequest, ChangeRequestComment, FollowUp, Incident

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


def _acknowledgeable(user: User) -> QuerySet[FollowUp]:
    """Open follow-ups in projects where the person takes part in changes, opened by someone
    else: the ones they could acknowledge."""
    if not user.is_authenticated:
        return FollowUp.objects.none()
    projects = (projects_with(user, "approve_change") | projects_with(user, "propose_change")
                | projects_with(user, "flip_killswitch"))
    return FollowUp.objects.filter(project__in=projects, acknowledged_at__isnull=True).exclude(opened_by=user)


def open_follow_ups(user: User) -> list[FollowUp]:
    """Follow-ups this person could acknowledge: in projects where they take part in changes,
    opened by someone else."""
    return list(_acknowledgeable(user).select_related("project", "environment", "flag").order_by("created_at"))


@dataclass(frozen=True)
class Waiting:
    """What waits for one person, for the navigation's count: change requests to decide and
    follow-ups to acknowledge."""

    change_requests: int
    follow_ups: int

    @property
    def total(self) -> int:
        return self.change_requests + self.follow_ups

    def __bool__(self) -> bool:
        return self.total > 0

    def __str__(self) -> str:
        return str(self.total)

    @property
    def label(self) -> str:
        """'2 change requests and 1 follow-up wait for you', for screen readers and the tooltip."""
        parts = [f"{count} {noun}{'' if count == 1 else 's'}" for count, noun in
                 ((self.change_requests, "change request"), (self.follow_ups, "follow-up")) if count]
        if not parts:
            return "Nothing waits for you"
        return f"{' and '.join(parts)} wait{'s' if self.total == 1 else ''} for you"


def waiting(user: User) -> Waiting:
    """The navigation's count: one query for the requests, one for the follow-ups."""
    if not user.is_authenticated:
        return Waiting(0, 0)
    return Waiting(change_requests=waiting_count(user), follow_ups=_acknowledgeable(user).count())


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
class DiscussionEntry:
    """A decision or a comment on a request, for its discussion in time order."""

    who: str
    when: datetime.datetime
    text: str
    decision: str = ""  # "approve" or "reject"; "" for a comment
    earlier_version: bool = False  # a decision on a version the requester has since edited


def discussion(change_request: ChangeRequest) -> list[DiscussionEntry]:
    """Decisions and comments, oldest first (from the prefetched rows of `change_request_page`)."""
    approvals: list[Approval] = list(change_request.approvals.all())
    comments: list[ChangeRequestComment] = list(change_request.comments.all())
    entries = [(a.created_at, 0, a.pk, DiscussionEntry(a.approver.get_username(), a.created_at, a.comment,
                                                       a.decision, a.diff_hash != change_request.diff_hash))
               for a in approvals]
    entries += [(c.created_at, 1, c.pk, DiscussionEntry(c.author_label, c.created_at, c.body)) for c in comments]
    return [entry for *_, entry in sorted(entries, key=lambda e: e[:3])]


@dataclass(frozen=True)
class EnvironmentReview:
    """What a request changes in one environment: the served state before and after (real
    JSON and a line diff), in words, and the share of recently seen units it would move."""

    flag_key: str
    environment_name: str
    governed: bool
    before: dict[str, Any]
    after: dict[str, Any]
    lines: list[DiffLine]
    json_lines: list[JsonLine]
    estimate: impact.Estimate
    moved: bool  # it would now serve something else than what approvals bind

    @property
    def before_json(self) -> str:
        return as_json(self.before)

    @property
    def after_json(self) -> str:
        return as_json(self.after)


def _served_state_here(change_request: ChangeRequest, targeting: dict[str, Any],
                       variations: dict[str, tuple[Any, int]], segments: dict[str, Any]) -> dict[str, Any]:
    flag = change_request.flag
    return build_served_state(targeting=targeting, fallback=flag.fallback_variation.key, variations=variations,
                              segments=segments, json_schema=flag.json_schema)


def _targeting_states(change_request: ChangeRequest) -> dict[str, tuple[str, bool, dict, dict]]:
    """A targeting request: its one environment, governed or not (a rollout stage can ask for
    approval anywhere), its base and proposed targeting over today's values and segments."""
    flag = change_request.flag
    variations = {key: (value, rank) for key, value, rank in Variation.objects.filter(flag_id=flag.pk)
                  .values_list("key", "value", "risk_rank")}
    segments: dict[str, Any] = {}
    if referenced_segments(change_request.base_state.get("rules")) | referenced_segments(
            change_request.proposed.get("rules")):
        segments = {key: {"included_keys": included, "excluded_keys": excluded, "rules": rules}
                    for key, included, excluded, rules in Segment.objects.filter(project_id=change_request.project_id)
                    .values_list("key", "included_keys", "excluded_keys", "rules")}
    environment = change_request.environment
    return {pair_key(flag.pk, environment.pk): (
        f"{flag.key} in {environment.name}", environment.is_governed,
        _served_state_here(change_request, change_request.base_state, variations, segments),
        _served_state_here(change_request, change_request.proposed, variations, segments))}


def _flag_wide_overrides(flag_id: int, parts: dict[str, Any], current: dict[str, tuple[Any, int]]) -> Overrides:
    variations = {key: (value, current[key][1]) for key, value in (parts.get("variations") or {}).items()
                  if key in current}
    for key, rank in (parts.get("risk_ranks") or {}).items():
        if key in current and rank is not None:
            variations[key] = (variations.get(key, current[key])[0], rank)
    overrides = Overrides(variations={flag_id: variations})
    if parts.get("fallback_variation"):
        overrides.fallback[flag_id] = parts["fallback_variation"]
    if "json_schema" in parts:
        overrides.json_schema[flag_id] = parts["json_schema"]
    return overrides


def _governed_states(change_request: ChangeRequest) -> dict[str, tuple[str, bool, dict, dict]]:
    """A flag-wide or segment request: every governed environment it reaches, served with its
    base, then with its proposal, over today's catalog."""
    project_id = change_request.project_id
    if change_request.kind == ChangeRequest.Kind.FLAG:
        flag_id = change_request.flag_id
        current = {key: (value, rank) for key, value, rank in Variation.objects.filter(flag_id=flag_id)
                   .values_list("key", "value", "risk_rank")}
        before = served_states(project_id=project_id, flag_ids=[flag_id],
                               overrides=_flag_wide_overrides(flag_id, change_request.base_state, current))
        after = served_states(project_id=project_id, flag_ids=[flag_id],
                              overrides=_flag_wide_overrides(flag_id, change_request.proposed, current))
    else:
        key = change_request.segment.key

        def content(state: dict[str, Any]) -> dict[str, Any]:
            return {name: state.get(name) or [] for name in ("included_keys", "excluded_keys", "rules")}

        before = served_states(project_id=project_id, segment_key=key,
                               overrides=Overrides(segments={key: content(change_request.base_state)}))
        after = served_states(project_id=project_id, segment_key=key,
                              overrides=Overrides(segments={key: content(change_request.proposed)}))
    found = {}
    for pair in sorted(set(before) | set(after), key=lambda k: tuple(int(part) for part in k.split(":"))):
        served = after.get(pair) or before[pair]
        found[pair] = (f"{served.flag_key} in {served.environment_name}", True,
                       (before.get(pair) or served).state, (after.get(pair) or served).state)
    return found


def change_request_review(change_request: ChangeRequest, *, now: datetime.datetime | None = None
                          ) -> list[EnvironmentReview]:
    """Each environment a request reaches, with its before/after and impact estimate. A fixed
    number of queries whatever the number of environments, rules or units."""
    if change_request.kind == ChangeRequest.Kind.TARGETING:
        states = _targeting_states(change_request)
    else:
        states = _governed_states(change_request)
    flags = {pk: (key, salt, surface) for pk, key, salt, surface in Flag.objects.filter(
        pk__in={int(pair.split(":")[0]) for pair in states}).values_list("pk", "key", "salt", "behavior_surface")}
    pairs = [(int(flag_id), int(environment_id)) for flag_id, environment_id in (p.split(":") for p in states)]
    seen = impact.recent_units(pairs, now=now or timezone.now())
    open_request = change_request.status in (*ChangeRequest.OPEN, ChangeRequest.Status.CONFLICTED)
    reviews = []
    for pair, (flag_id_environment_id, (where, governed, before, after)) in zip(pairs, states.items(), strict=True):
        flag_key, salt, surface = flags[pair[0]]
        units, capped = seen[pair]
        bound = change_request.served_hashes.get(flag_id_environment_id)
        reviews.append(EnvironmentReview(
            flag_key=flag_key, environment_name=where, governed=governed, before=before, after=after,
            lines=describe_served_change(before=before, after=after, surface=surface),
            json_lines=json_line_diff(before, after),
            estimate=impact.estimate(flag_key=flag_key, salt=salt, before=before, after=after, units=units,
                                     capped=capped),
            moved=open_request and bound is not None and bound != served_state_hash(after)))
    return reviews


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


def active_incidents(project_key: str, user: User) -> list[Incident]:
    """Incident mode on in a project the person belongs to, for the banner on its pages: one
    query (the membership check is a subquery of it)."""
    if not user.is_authenticated or not project_key:
        return []
    return list(Incident.objects.filter(project__key=project_key, lifted_at__isnull=True,
                                        project__in=visible_projects(user))
                .select_related("project", "environment").order_by("environment__sort_order", "id"))


def incident_scope(environment: Environment, surfaces: list[str]) -> list[Targeting]:
    """The flags incident mode would stop now in `environment` (every flag on there, or those
    of the chosen behavior surfaces), with what each serves once stopped: its fallback. The
    same choice as `incident_mode.incident_start`, read without locks, for the preview."""
    return list(incident_mode.incident_scope(environment, surfaces)
                .select_related("flag__fallback_variation").order_by("flag__key"))
