"""Projects, environments, members, flags and variations."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F

from audit.constants import AuditAction
from audit.services import Actor, record
from audit.validators import check_text_limit
from flags.constants import LifecycleStage, ValueType
from flags.evaluation.targeting_schema import (
    served_variations,
)
from flags.models import (
    Environment,
    Flag,
    Project,
    Tag,
    Targeting,
    Variation,
)
from flags.row_states import flag_contract, variation_state
from flags.served_state.guard import governed_write
from flags.services._common import (
    ConflictError,
    _bump_project,
    _save_new,
    _user_or_none,
)
from flags.services.members import flag_owner_permission_sync
from flags.validators import validate_json_schema_document, validate_variation_value

# --- projects, environments, members -------------------------------------------------------


@transaction.atomic
def project_create(*, key: str, name: str, description: str = "", actor: Actor) -> Project:
    if Project.objects.filter(key=key).exists():
        raise ValidationError({"key": f"A project with key “{key}” already exists."})
    project = Project(key=key, name=name, description=description)
    _save_new(project, duplicate_field="key", duplicate_message=f"A project with key “{key}” already exists.")
    record(actor=actor, action=AuditAction.PROJECT_CREATED, target=project, project=project,
           after={"key": key, "name": name})
    return project


@transaction.atomic
def project_time_zone_set(*, project: Project, time_zone: str, actor: Actor) -> Project:
    """Review dates and reminder days are dates in the project's time zone."""
    project = Project.objects.select_for_update().get(pk=project.pk)
    before = project.time_zone
    project.time_zone = (time_zone or "").strip()
    try:
        project.full_clean(validate_unique=False)
    except ValidationError as exc:
        raise ValidationError({"time_zone": exc.message_dict.get("time_zone", exc.messages)}) from exc
    if project.time_zone == before:
        return project
    project.save(update_fields=["time_zone"])
    record(actor=actor, action=AuditAction.PROJECT_UPDATED, target=project, project=project,
           before={"time_zone": before}, after={"time_zone": project.time_zone},
           summary=f"Time zone of {project.name}: {before} → {project.time_zone}")
    return project


@transaction.atomic
def environment_create(
    *, project: Project, key: str, name: str, is_governed: bool = False, sort_order: int = 0, actor: Actor
) -> Environment:
    if project.environments.filter(key=key).exists():
        raise ValidationError({"key": f"An environment with key “{key}” already exists in this project."})
    environment = Environment(project=project, key=key, name=name, is_governed=is_governed, sort_order=sort_order)
    _save_new(environment, duplicate_field="key", duplicate_message="Duplicate environment key.")
    # Every flag gets its (off) targeting in the new environment, served its fallback.
    for flag in project.flags.select_related("fallback_variation"):
        _targeting_create_default(flag=flag, environment=environment, actor=actor)
    record(actor=actor, action=AuditAction.ENVIRONMENT_CREATED, target=environment, project=project,
           environment=environment, after={"key": key, "name": name, "is_governed": is_governed})
    return environment


@transaction.atomic
def environment_govern(*, environment: Environment, actor: Actor, reason: str = "") -> Environment:
    """Put an environment under change control: from now on what it serves changes only as
    the approval policy allows. One way only: nothing here takes governance away, since that
    would let any change through."""
    check_text_limit("reason", reason)
    environment = Environment.objects.select_for_update().select_related("project").get(pk=environment.pk)
    if environment.is_governed:
        return environment
    environment.is_governed = True
    environment.save(update_fields=["is_governed"])
    record(actor=actor, action=AuditAction.ENVIRONMENT_GOVERNED, target=environment, project=environment.project,
           environment=environment, before={"is_governed": False}, after={"is_governed": True}, reason=reason,
           summary=f"{environment.name} is governed: risky changes now need approval")
    return environment


# --- flags ---------------------------------------------------------------------------------


def _tags_for(project: Project, names: Iterable[str]) -> list[Tag]:
    cleaned = sorted({n.strip().lower() for n in names if n and n.strip()})
    for name in cleaned:
        if len(name) > 50:
            raise ValidationError({"tags": f"Tag “{name[:20]}…” is longer than 50 characters."})
    return [Tag.objects.get_or_create(project=project, name=name)[0] for name in cleaned]


def _clean_metric_list(metrics: Iterable[Any]) -> list[str]:
    cleaned = []
    for metric in metrics:
        if not isinstance(metric, str):
            raise ValidationError({"guardrail_metrics": f"{metric!r} is not a metric key."})
        if metric.strip() and metric.strip() not in cleaned:
            cleaned.append(metric.strip())
    return cleaned


def _check_schema(value_type: str, json_schema: Any) -> None:
    if json_schema is None:
        return
    if value_type != ValueType.JSON:
        raise ValidationError({"json_schema": "Only JSON flags take a JSON Schema."})
    try:
        validate_json_schema_document(json_schema)
    except ValidationError as exc:
        raise ValidationError({"json_schema": exc.messages}) from exc


def _targeting_create_default(*, flag: Flag, environment: Environment, actor: Actor) -> Targeting:
    targeting = Targeting(
        flag=flag,
        environment=environment,
        enabled=False,
        default_serve={"variation": flag.fallback_variation.key},
        updated_by=_user_or_none(actor),
    )
    targeting.full_clean()
    targeting.save()
    return targeting


@transaction.atomic
def flag_create(
    *,
    project: Project,
    key: str,
    name: str,
    behavior_surface: str,
    value_type: str,
    lifetime: str,
    variations: Sequence[dict[str, Any]],
    fallback_variation_key: str,
    json_schema: dict | None = None,
    description: str = "",
    owner_user: AbstractBaseUser | None = None,
    owner_team: str = "",
    review_date: datetime.date | None = None,
    cleanup_rule: str = "",
    primary_metric: str = "",
    guardrail_metrics: Iterable[str] = (),
    rollback_action: str = "",
    first_audience: str = "",
    tags: Iterable[str] = (),
    actor: Actor,
) -> Flag:
    """Create a flag with its variations and an off targeting in every environment."""
    if project.flags.filter(key=key).exists():
        raise ValidationError({"key": f"A flag with key “{key}” already exists in this project."})
    _check_schema(value_type, json_schema)
    if not variations:
        raise ValidationError({"variations": "A flag needs at least one variation: its fallback."})
    flag = Flag(
        project=project, key=key, name=name, description=description, behavior_surface=behavior_surface,
        value_type=value_type, json_schema=json_schema, owner_user=owner_user, owner_team=owner_team,
        lifetime=lifetime, review_date=review_date, cleanup_rule=cleanup_rule, primary_metric=primary_metric,
        guardrail_metrics=_clean_metric_list(guardrail_metrics), rollback_action=rollback_action,
        first_audience=first_audience, stage=LifecycleStage.DRAFT, created_by=_user_or_none(actor),
    )
    _save_new(flag, duplicate_field="key", duplicate_message=f"A flag with key “{key}” already exists in this project.")
    flag.tags.set(_tags_for(project, tags))
    created: dict[str, Variation] = {}
    for index, spec in enumerate(variations):
        variation = _variation_build(flag=flag, sort_order=index, **spec)
        if variation.key in created:
            raise ValidationError({"variations": f"Variation key “{variation.key}” appears twice."})
        variation.save()
        created[variation.key] = variation
    if fallback_variation_key not in created:
        raise ValidationError({"fallback_variation": f"“{fallback_variation_key}” is not one of the variations."})
    flag.fallback_variation = created[fallback_variation_key]
    flag.save(update_fields=["fallback_variation"])
    flag_owner_permission_sync(flag=flag, previous_owner_id=None)
    for environment in project.environments.all():
        _targeting_create_default(flag=flag, environment=environment, actor=actor)
    _bump_project(project)
    record(
        actor=actor, action=AuditAction.FLAG_CREATED, target=flag, project=project, flag=flag,
        after={**flag_contract(flag), "variations": [variation_state(v) for v in created.values()]},
        summary=f"Created flag {key} with {len(created)} variations",
    )
    return flag


FLAG_EDITABLE_FIELDS = (
    "name", "description", "behavior_surface", "json_schema", "owner_user", "owner_team", "lifetime",
    "review_date", "cleanup_rule", "primary_metric", "guardrail_metrics", "rollback_action",
    "first_audience",
)


@transaction.atomic
def flag_update(
    *,
    flag: Flag,
    actor: Actor,
    fallback_variation_key: str | None = None,
    tags: Iterable[str] | None = None,
    expected_version: int | None = None,
    reason: str = "",
    change_request_id: int | None = None,
    **changes: Any,
) -> Flag:
    """Edit a flag's contract. The key and value type are not editable: the key is the
    stable name applications evaluate, and retyping would invalidate every variation."""
    unknown = set(changes) - set(FLAG_EDITABLE_FIELDS)
    if unknown:
        raise ValidationError({name: "This field cannot be changed." for name in sorted(unknown)})
    with governed_write() as scope:
        scope.touch_flags(project_id=Flag.objects.values_list("project_id", flat=True).get(pk=flag.pk),
                          flag_ids=[flag.pk])
        return _flag_write(flag=flag, actor=actor, fallback_variation_key=fallback_variation_key, tags=tags,
                           expected_version=expected_version, reason=reason, change_request_id=change_request_id,
                           changes=changes)


def _flag_write(*, flag: Flag, actor: Actor, fallback_variation_key: str | None, tags: Iterable[str] | None,
                expected_version: int | None, reason: str, change_request_id: int | None,
                changes: dict[str, Any]) -> Flag:
    flag = (
        Flag.objects.select_for_update(of=("self",)).select_related("fallback_variation", "owner_user").get(pk=flag.pk)
    )
    if expected_version is not None and flag.version != expected_version:
        raise ConflictError("Someone changed this flag since you opened it. Reload and try again.")
    before = flag_contract(flag)
    before_owner_id = flag.owner_user_id
    if "json_schema" in changes:
        _check_schema(flag.value_type, changes["json_schema"])
    if "guardrail_metrics" in changes:
        changes["guardrail_metrics"] = _clean_metric_list(changes["guardrail_metrics"])
    for name, value in changes.items():
        setattr(flag, name, value)
    if fallback_variation_key is not None:
        try:
            flag.fallback_variation = flag.variations.get(key=fallback_variation_key)
        except Variation.DoesNotExist as exc:
            raise ValidationError({"fallback_variation": f"“{fallback_variation_key}” is not a variation of this flag."}) from exc
    if "json_schema" in changes and flag.json_schema:
        # A new schema must accept every existing variation.
        for variation in flag.variations.all():
            try:
                validate_variation_value(value_type=flag.value_type, json_schema=flag.json_schema, value=variation.value)
            except ValidationError as exc:
                raise ValidationError({"json_schema": f"Variation “{variation.key}” does not match: {exc.messages[0]}"}) from exc
    flag.full_clean()
    if tags is not None:
        flag.tags.set(_tags_for(flag.project, tags))
    after = flag_contract(flag)
    if after == before:
        return flag
    flag.version = F("version") + 1
    flag.save()
    flag_owner_permission_sync(flag=flag, previous_owner_id=before_owner_id)
    flag.refresh_from_db(fields=["version"])
    _bump_project(flag.project)
    changed = sorted(k for k in after if after[k] != before[k])
    record(
        actor=actor, action=AuditAction.FLAG_UPDATED, target=flag, project=flag.project, flag=flag,
        before={k: before[k] for k in changed}, after={k: after[k] for k in changed},
        summary=f"Changed {', '.join(changed)} of {flag.key}", reason=reason, change_request_id=change_request_id,
    )
    return flag


# --- variations ----------------------------------------------------------------------------


def _variation_build(
    *, flag: Flag, key: str, value: Any, name: str = "", description: str = "", risk_rank: int = 0,
    sort_order: int = 0,
) -> Variation:
    try:
        validate_variation_value(value_type=flag.value_type, json_schema=flag.json_schema, value=value)
    except ValidationError as exc:
        raise ValidationError({"value": exc.messages}) from exc
    variation = Variation(flag=flag, key=key, name=name or key, value=value, description=description,
                          risk_rank=risk_rank, sort_order=sort_order)
    variation.full_clean()
    return variation


@transaction.atomic
def variation_create(
    *, flag: Flag, key: str, value: Any, name: str = "", description: str = "", risk_rank: int = 0,
    actor: Actor,
) -> Variation:
    flag = Flag.objects.select_for_update().get(pk=flag.pk)
    if flag.variations.filter(key=key).exists():
        raise ValidationError({"key": f"This flag already has a variation “{key}”."})
    last = flag.variations.order_by("-sort_order").values_list("sort_order", flat=True).first()
    variation = _variation_build(flag=flag, key=key, value=value, name=name, description=description,
                                 risk_rank=risk_rank, sort_order=(last or 0) + 1)
    _save_new(variation, duplicate_field="key", duplicate_message=f"This flag already has a variation “{key}”.")
    _bump_project(flag.project)
    record(actor=actor, action=AuditAction.VARIATION_CREATED, target=variation, project=flag.project,
           flag=flag, after=variation_state(variation))
    return variation


@transaction.atomic
def variation_update(
    *, variation: Variation, actor: Actor, reason: str = "", change_request_id: int | None = None, **changes: Any
) -> Variation:
    """Change a variation's name, value, description or risk rank; its key is immutable
    because targeting refers to it."""
    unknown = set(changes) - {"name", "value", "description", "risk_rank"}
    if unknown:
        raise ValidationError({name: "This field cannot be changed." for name in sorted(unknown)})
    flag_id, project_id = Variation.objects.filter(pk=variation.pk).values_list("flag_id", "flag__project_id").get()
    with governed_write() as scope:
        scope.touch_flags(project_id=project_id, flag_ids=[flag_id])
        return _variation_write(variation=variation, actor=actor, reason=reason, change_request_id=change_request_id,
                                changes=changes)


def _variation_write(*, variation: Variation, actor: Actor, reason: str, change_request_id: int | None,
                     changes: dict[str, Any]) -> Variation:
    variation = Variation.objects.select_for_update(of=("self",)).select_related("flag__project").get(pk=variation.pk)
    before = variation_state(variation)
    flag = variation.flag
    if "value" in changes:
        try:
            validate_variation_value(value_type=flag.value_type, json_schema=flag.json_schema, value=changes["value"])
        except ValidationError as exc:
            raise ValidationError({"value": exc.messages}) from exc
    for name, value in changes.items():
        setattr(variation, name, value)
    if not variation.name:
        variation.name = variation.key
    variation.full_clean()
    after = variation_state(variation)
    if after == before:
        return variation
    variation.save()
    _bump_project(flag.project)
    changed = sorted(k for k in after if after[k] != before[k])
    record(actor=actor, action=AuditAction.VARIATION_UPDATED, target=variation, project=flag.project, flag=flag,
           before={k: before[k] for k in changed}, after={k: after[k] for k in changed},
           summary=f"Changed {', '.join(changed)} of variation {variation.key}", reason=reason,
           change_request_id=change_request_id)
    return variation


def flag_change_validate(*, flag: Flag, variations: dict[str, Any] | None = None,
                         fallback_variation: str | None = None, **contract: Any) -> None:
    """Check flag-wide changes as flag_update and variation_update would, without saving:
    values against the (new) schema, the fallback among the variations. Errors name the field."""
    if set(contract) - {"json_schema"}:
        raise ValidationError({name: "This field cannot be changed." for name in sorted(set(contract) - {"json_schema"})})
    schema = contract.get("json_schema", flag.json_schema)
    if "json_schema" in contract:
        _check_schema(flag.value_type, schema)
    values = dict(flag.variations.values_list("key", "value"))
    unknown = set(variations or {}) - set(values)
    if unknown:
        raise ValidationError({"value": f"No such variation: {', '.join(sorted(unknown))}."})
    if fallback_variation is not None and fallback_variation not in values:
        raise ValidationError({"fallback_variation": f"“{fallback_variation}” is not a variation of this flag."})
    values.update(variations or {})
    for key, value in values.items():
        try:
            validate_variation_value(value_type=flag.value_type, json_schema=schema, value=value)
        except ValidationError as exc:
            field = "value" if key in (variations or {}) else "json_schema"
            raise ValidationError({field: f"Variation “{key}” does not match: {exc.messages[0]}"}) from exc


def governed_served_variations(flag: Flag) -> set[str]:
    """The variations people can get in the flag's governed environments: the fallback (served
    whenever the flag is off) and, where it is on, every target, rule and default. Changing
    the value of one of these, or the fallback, reaches production at once."""
    served: set[str] = set()
    for targeting in flag.targetings.filter(environment__is_governed=True):
        served.add(flag.fallback_variation.key)
        if targeting.enabled:
            served |= served_variations(targeting.default_serve)
            for rule in targeting.rules:
                served |= served_variations(rule.get("serve"))
            served |= {t["variation"] for t in targeting.targets}
    return served


def variation_usages(variation: Variation) -> list[str]:
    """Where a variation is referenced: the fallback, and targeting in any environment."""
    flag = variation.flag
    usages = []
    if flag.fallback_variation_id == variation.pk:
        usages.append("it is the flag's fallback")
    for targeting in flag.targetings.select_related("environment"):
        where = []
        if variation.key in served_variations(targeting.default_serve):
            where.append("the default rule")
        if any(variation.key in served_variations(rule.get("serve")) for rule in targeting.rules):
            where.append("a rule")
        if any(t.get("variation") == variation.key for t in targeting.targets):
            where.append("individual targets")
        if where:
            usages.append(f"{targeting.environment.name}: {', '.join(where)}")
    return usages


@transaction.atomic
def variation_delete(*, variation: Variation, actor: Actor) -> None:
    # Lock the flag first, as variation_create does, so the two never deadlock.
    Flag.objects.select_for_update().filter(pk=variation.flag_id).first()
    variation = Variation.objects.select_for_update(of=("self",)).select_related("flag__project").get(pk=variation.pk)
    usages = variation_usages(variation)
    if usages:
        raise ValidationError(
            f"Variation “{variation.key}” is in use and cannot be deleted ({'; '.join(usages)})."
        )
    flag = variation.flag
    before = variation_state(variation)
    label_target = Variation(pk=variation.pk, key=variation.key, flag=flag)
    variation.delete()
    _bump_project(flag.project)
    record(actor=actor, action=AuditAction.VARIATION_DELETED, target=label_target, project=flag.project,
           flag=flag, before=before)
