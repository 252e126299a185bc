"""Words and links change control gives people: a proposal, a request or a conflict in
lines ("tool mode for beta_accounts (new rule): read_only (risk 1) → write (risk 4)"), a
request's label ("CR-12 … in production"), and the links notifications carry.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from audit.diff import diff as audit_diff
from flags import services as flag_services
from flags.models import Flag
from rollouts.diff import DiffLine, describe_flag_change, describe_segment_change, describe_targeting_change
from rollouts.models import ChangeRequest


def describe(flag: Flag, base: dict[str, Any], proposed: dict[str, Any]) -> list[DiffLine]:
    ranks = dict(flag.variations.values_list("key", "risk_rank"))
    return describe_targeting_change(base=base, proposed=proposed, risk_ranks=ranks,
                                     fallback=flag.fallback_variation.key, surface=flag.behavior_surface)


def describe_flag(flag: Flag, base: dict[str, Any], proposed: dict[str, Any]) -> list[DiffLine]:
    ranks = dict(flag.variations.values_list("key", "risk_rank"))
    governed = [t.environment.name for t in flag.targetings.select_related("environment")
                .filter(environment__is_governed=True)]
    return describe_flag_change(base=base, proposed=proposed, risk_ranks=ranks,
                                served=flag_services.governed_served_variations(flag), governed_names=governed)


def describe_request(change_request: ChangeRequest) -> list[DiffLine]:
    """The request's proposal in words, for its page."""
    if change_request.kind == ChangeRequest.Kind.FLAG:
        return describe_flag(change_request.flag, change_request.base_state, change_request.proposed)
    if change_request.kind == ChangeRequest.Kind.SEGMENT:
        return describe_segment_change(key=change_request.segment.key, base=change_request.base_state,
                                       proposed=change_request.proposed)
    return describe(change_request.flag, change_request.base_state, change_request.proposed)


def describe_conflict(change_request: ChangeRequest) -> list[DiffLine]:
    """What changed between the request's base and the state that refused it."""
    conflict = change_request.conflict
    if not conflict:
        return []
    if conflict.get("served"):
        return describe_served_conflict(change_request)
    if change_request.kind == ChangeRequest.Kind.FLAG:
        return describe_flag(change_request.flag, conflict["base"], conflict["current"])
    if change_request.kind == ChangeRequest.Kind.SEGMENT:
        return describe_segment_change(key=change_request.segment.key, base=conflict["base"],
                                       proposed=conflict["current"])
    return describe(change_request.flag, conflict["base"], conflict["current"])


def describe_served_conflict(change_request: ChangeRequest) -> list[DiffLine]:
    """What moved between the served state approvers approved and the one apply found, path
    by path ("variations.cached_answer.value: 'a' → 'b'", "segments.pilot_accounts.rules…")."""
    lines = []
    for key, current in (change_request.conflict or {}).get("served", {}).items():
        approved = change_request.served_states.get(key, {})
        for change in audit_diff(approved, current)[:20]:
            lines.append(DiffLine(f"{change.path}: {change.before or '(none)'} → {change.after or '(none)'}"))
    return lines


def change_request_url(change_request: ChangeRequest) -> str:
    return reverse("rollouts:change_request", kwargs={"project_key": change_request.project.key,
                                                      "pk": change_request.pk})


def label(change_request: ChangeRequest) -> str:
    return f"CR-{change_request.pk} {change_request.subject} in {change_request.where}"


def flag_url(flag: Flag) -> str:
    return reverse("flags:flag_detail", kwargs={"project_key": flag.project.key, "flag_key": flag.key})
