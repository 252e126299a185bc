"""Segments: reusable audiences."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from audit.constants import AuditAction
from audit.services import Actor, record
from flags.evaluation.targeting_schema import (
    referenced_segments,
    validate_segment_rules,
)
from flags.models import (
    Project,
    Segment,
    Targeting,
)
from flags.row_states import segment_state
from flags.served_state.guard import governed_write
from flags.services._common import (
    ConflictError,
    _bump_project,
    _clean_key_list,
    _problems_to_error,
    _save_new,
)

# --- segments ------------------------------------------------------------------------------


def _validate_segment(segment: Segment) -> None:
    segment.included_keys = _clean_key_list(segment.included_keys, "included_keys")
    segment.excluded_keys = _clean_key_list(segment.excluded_keys, "excluded_keys")
    problems = validate_segment_rules(segment.rules)
    if problems:
        raise _problems_to_error("rules", problems)
    references = referenced_segments(segment.rules)
    if segment.key in references:
        raise ValidationError({"rules": "A segment cannot refer to itself."})
    others = {s.key: s for s in Segment.objects.filter(project_id=segment.project_id).exclude(pk=segment.pk)}
    unknown = references - set(others)
    if unknown:
        raise ValidationError({"rules": f"Unknown segment(s): {', '.join(sorted(unknown))}."})
    # Refuse cycles through other segments (a → b → a), which evaluation could never settle.
    stack = list(references)
    seen: set[str] = set()
    while stack:
        current = stack.pop()
        if current == segment.key:
            raise ValidationError({"rules": "These rules make the segment refer to itself through other segments."})
        if current in seen or current not in others:
            continue
        seen.add(current)
        stack.extend(referenced_segments(others[current].rules))


@transaction.atomic
def segment_create(
    *, project: Project, key: str, name: str, description: str = "", included_keys: Iterable[str] = (),
    excluded_keys: Iterable[str] = (), rules: list | None = None, actor: Actor,
) -> Segment:
    if project.segments.filter(key=key).exists():
        raise ValidationError({"key": f"A segment with key “{key}” already exists in this project."})
    segment = Segment(project=project, key=key, name=name, description=description,
                      included_keys=list(included_keys), excluded_keys=list(excluded_keys), rules=rules or [])
    _validate_segment(segment)
    _save_new(segment, duplicate_field="key", duplicate_message=f"A segment with key “{key}” already exists.")
    _bump_project(project)
    record(actor=actor, action=AuditAction.SEGMENT_CREATED, target=segment, project=project,
           after=segment_state(segment))
    return segment


@transaction.atomic
def segment_update(
    *, segment: Segment, actor: Actor, expected_version: int | None = None, reason: str = "",
    change_request_id: int | None = None, **changes: Any
) -> Segment:
    """Change a segment. Every governed environment whose rules reach it is judged by the
    served-state guard: a change that raises risk there is refused unless an approved change
    request (`change_request_id`, with its authorization) carries it."""
    unknown = set(changes) - {"name", "description", "included_keys", "excluded_keys", "rules"}
    if unknown:
        raise ValidationError({name: "This field cannot be changed." for name in sorted(unknown)})
    with governed_write() as scope:
        scope.touch_segment(project_id=segment.project_id, segment_key=segment.key)
        return _segment_write(segment=segment, actor=actor, expected_version=expected_version, reason=reason,
                              change_request_id=change_request_id, changes=changes)


def _segment_write(*, segment: Segment, actor: Actor, expected_version: int | None, reason: str,
                   change_request_id: int | None, changes: dict[str, Any]) -> Segment:
    segment = Segment.objects.select_for_update(of=("self",)).select_related("project").get(pk=segment.pk)
    if expected_version is not None and segment.version != expected_version:
        raise ConflictError("Someone changed this segment since you opened it. Reload and try again.")
    before = segment_state(segment)
    for name, value in changes.items():
        setattr(segment, name, value)
    _validate_segment(segment)
    segment.full_clean()
    after = segment_state(segment)
    if after == before:
        return segment
    segment.version += 1
    segment.save()
    _bump_project(segment.project)
    changed = sorted(k for k in after if after[k] != before[k])
    record(actor=actor, action=AuditAction.SEGMENT_UPDATED, target=segment, project=segment.project,
           before={k: before[k] for k in changed}, after={k: after[k] for k in changed},
           summary=f"Changed {', '.join(changed)} of segment {segment.key}", reason=reason,
           change_request_id=change_request_id)
    return segment


SEGMENT_EDITABLE_FIELDS = ("name", "description", "included_keys", "excluded_keys", "rules")


def segment_proposal(*, segment: Segment, changes: dict[str, Any]) -> dict[str, Any]:
    """The whole editable content `changes` would give the segment, validated as
    segment_update validates it, without saving."""
    unknown = set(changes) - set(SEGMENT_EDITABLE_FIELDS)
    if unknown:
        raise ValidationError({name: "This field cannot be changed." for name in sorted(unknown)})
    draft = Segment(pk=segment.pk, project_id=segment.project_id, key=segment.key, version=segment.version,
                    **{name: getattr(segment, name) for name in SEGMENT_EDITABLE_FIELDS})
    for name, value in changes.items():
        setattr(draft, name, value)
    _validate_segment(draft)
    draft.full_clean(validate_unique=False, validate_constraints=False)
    return {name: getattr(draft, name) for name in SEGMENT_EDITABLE_FIELDS}


def segment_governed_usages(segment: Segment) -> list[str]:
    """Governed environments whose serving depends on this segment, directly or through
    segments that refer to it: changing it there changes production."""
    others = {s.key: s for s in Segment.objects.filter(project_id=segment.project_id)}
    depending = {segment.key}
    grew = True
    while grew:  # segments that refer (transitively) to this one
        grew = False
        for key, other in others.items():
            if key not in depending and referenced_segments(other.rules) & depending:
                depending.add(key)
                grew = True
    usages = []
    for targeting in Targeting.objects.filter(flag__project_id=segment.project_id, environment__is_governed=True,
                                              enabled=True).select_related("flag", "environment"):
        if referenced_segments(targeting.rules) & depending:
            usages.append(f"{targeting.flag.key} in {targeting.environment.name}")
    return usages


def segment_usages(segment: Segment) -> list[str]:
    usages = []
    for targeting in Targeting.objects.filter(flag__project_id=segment.project_id).select_related("flag", "environment"):
        if segment.key in referenced_segments(targeting.rules):
            usages.append(f"{targeting.flag.key} in {targeting.environment.name}")
    for other in Segment.objects.filter(project_id=segment.project_id).exclude(pk=segment.pk):
        if segment.key in referenced_segments(other.rules):
            usages.append(f"segment {other.key}")
    return usages


@transaction.atomic
def segment_delete(*, segment: Segment, actor: Actor) -> None:
    with governed_write() as scope:  # holds off a targeting change that would start using it
        scope.touch_segment(project_id=segment.project_id, segment_key=segment.key)
        _segment_remove(segment=segment, actor=actor)


def _segment_remove(*, segment: Segment, actor: Actor) -> None:
    segment = Segment.objects.select_for_update(of=("self",)).select_related("project").get(pk=segment.pk)
    usages = segment_usages(segment)
    if usages:
        raise ValidationError(f"Segment “{segment.key}” is used by {', '.join(usages)} and cannot be deleted.")
    before = segment_state(segment)
    project = segment.project
    label_target = Segment(pk=segment.pk, key=segment.key, project=project)
    segment.delete()
    _bump_project(project)
    record(actor=actor, action=AuditAction.SEGMENT_DELETED, target=label_target, project=project, before=before)
