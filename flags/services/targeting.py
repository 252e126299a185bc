"""Per-environment targeting of a flag."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from audit.constants import AuditAction
from audit.services import Actor, record
from flags.constants import LifecycleStage
from flags.evaluation.targeting_schema import (
    Problem,
    referenced_segments,
    validate_rules,
    validate_serve,
    validate_targets,
)
from flags.models import (
    Segment,
    Targeting,
)
from flags.row_states import targeting_state
from flags.served_state.guard import governed_write
from flags.services._common import (
    ConflictError,
    _bump_environments,
    _user_or_none,
)
from flags.services.lifecycle import turn_on_problems

# --- targeting -----------------------------------------------------------------------------


@transaction.atomic
def targeting_update(
    *,
    targeting: Targeting,
    actor: Actor,
    expected_version: int | None = None,
    reason: str = "",
    change_request_id: int | None = None,
    **changes: Any,
) -> Targeting:
    """Replace parts of one flag's targeting in one environment, validated as a whole.
    `expected_version` guards against overwriting a change made since the caller read it;
    `change_request_id` links the audit row to the approved request that carried it."""
    unknown = set(changes) - {"enabled", "targets", "rules", "default_serve", "assignment_unit"}
    if unknown:
        raise ValidationError({name: "Unknown targeting field." for name in sorted(unknown)})
    flag_id, project_id, environment_id = (Targeting.objects.filter(pk=targeting.pk)
                                           .values_list("flag_id", "flag__project_id", "environment_id").get())
    with governed_write() as scope:
        scope.touch_flags(project_id=project_id, flag_ids=[flag_id], environment_ids=[environment_id])
        return _targeting_write(targeting=targeting, actor=actor, expected_version=expected_version, reason=reason,
                                change_request_id=change_request_id, changes=changes)


def _targeting_write(*, targeting: Targeting, actor: Actor, expected_version: int | None, reason: str,
                     change_request_id: int | None, changes: dict[str, Any]) -> Targeting:
    targeting = (
        Targeting.objects.select_for_update(of=("self",))
        .select_related("flag__project", "environment")
        .get(pk=targeting.pk)
    )
    if expected_version is not None and targeting.version != expected_version:
        raise ConflictError(
            f"This targeting changed since you opened it (now version {targeting.version}). Reload and try again."
        )
    before = targeting_state(targeting)
    for name, value in changes.items():
        setattr(targeting, name, value)
    _validate_targeting(targeting, turning_on=targeting.enabled is True and not before["enabled"])
    after = targeting_state(targeting)
    if after == before:
        return targeting
    targeting.version = before["version"] + 1
    targeting.updated_by = _user_or_none(actor)
    targeting.full_clean()
    targeting.save()
    _bump_environments([targeting.environment_id])
    after["version"] = targeting.version
    changed = sorted(k for k in after if after[k] != before[k] and k != "version")
    record(
        actor=actor, action=AuditAction.TARGETING_UPDATED, target=targeting.flag, project=targeting.flag.project,
        environment=targeting.environment, flag=targeting.flag,
        before={k: before[k] for k in [*changed, "version"]}, after={k: after[k] for k in [*changed, "version"]},
        summary=f"Changed {', '.join(changed)} of {targeting.flag.key} in {targeting.environment.name}",
        reason=reason, change_request_id=change_request_id,
    )
    return targeting


TARGETING_FIELDS = ("enabled", "targets", "rules", "default_serve", "assignment_unit")


def targeting_proposal(*, targeting: Targeting, changes: dict[str, Any]) -> dict[str, Any]:
    """The whole targeting state `changes` would produce, validated, without saving it."""
    unknown = set(changes) - set(TARGETING_FIELDS)
    if unknown:
        raise ValidationError({name: "Unknown targeting field." for name in sorted(unknown)})
    draft = Targeting(flag=targeting.flag, environment=targeting.environment,
                      **{name: getattr(targeting, name) for name in TARGETING_FIELDS})
    for name, value in changes.items():
        setattr(draft, name, value)
    _validate_targeting(draft, turning_on=draft.enabled is True and not targeting.enabled)
    return {name: getattr(draft, name) for name in TARGETING_FIELDS}


def _validate_targeting(targeting: Targeting, *, turning_on: bool = False) -> None:
    flag = targeting.flag
    variation_keys = set(flag.variations.values_list("key", flat=True))
    segment_keys = set(Segment.objects.filter(project_id=flag.project_id).values_list("key", flat=True))
    errors: dict[str, list[str]] = {}
    if not isinstance(targeting.enabled, bool):
        errors["enabled"] = ["Must be on or off."]
    elif turning_on and flag.stage == LifecycleStage.ARCHIVED:
        errors["enabled"] = ["This flag is archived: restore it before turning it on."]
    elif turning_on and targeting.environment.is_governed and (missing := turn_on_problems(flag)):
        errors["enabled"] = [f"A temporary flag needs {', '.join(missing)} before it can be turned "
                             f"on in {targeting.environment.name}. Add them to the contract first."]
    problems = validate_targets(targeting.targets, variation_keys)
    if problems:
        errors["targets"] = [str(p) for p in problems]
    problems = validate_rules(targeting.rules, variation_keys)
    unknown_segments = referenced_segments(targeting.rules) - segment_keys
    if unknown_segments:
        problems.append(Problem("rules", f"unknown segment(s): {', '.join(sorted(unknown_segments))}"))
    if problems:
        errors["rules"] = [str(p) for p in problems]
    problems = validate_serve(targeting.default_serve, variation_keys, "default")
    if problems:
        errors["default_serve"] = [str(p) for p in problems]
    unit = targeting.assignment_unit
    if not isinstance(unit, str) or not unit.strip() or len(unit) > 100:
        errors["assignment_unit"] = ["Name the context attribute to bucket on, e.g. targetingKey or accountId."]
    if errors:
        raise ValidationError(errors)
