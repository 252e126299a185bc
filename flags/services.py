"""Every write to the flag catalog. Each service takes keyword-only arguments and an explicit
actor, validates before saving, and writes its audit row in the same transaction.

Services apply changes; deciding *whether* a change may be applied directly (governed
environments, approvals) belongs to the callers: the console refuses governed edits, and the
approval workflow will call these same services when a request is applied.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import Actor, SystemActor, record
from flags.constants import LifecycleStage, Role, ValueType
from flags.evaluation.targeting_schema import (
    Problem,
    referenced_segments,
    served_variations,
    validate_clause,
    validate_rules,
    validate_segment_rules,
    validate_serve,
    validate_targets,
)
from flags.models import (
    Environment,
    Flag,
    Membership,
    Project,
    SdkKey,
    Segment,
    Tag,
    Targeting,
    Variation,
)
from flags.snapshots import flag_contract, segment_state, targeting_state, variation_state
from flags.validators import validate_json_schema_document, validate_variation_value

SDK_KEY_PREFIX = "fo_srv_"
MAX_KEYS_PER_LIST = 10_000


class ConflictError(ValidationError):
    """The object changed since the caller read it (a stale version)."""


def _user_or_none(actor: Actor) -> AbstractBaseUser | None:
    return actor if isinstance(actor, AbstractBaseUser) else None


def _problems_to_error(field: str, problems: Sequence[Problem]) -> ValidationError:
    return ValidationError({field: [str(p) for p in problems]})


def _save_new(instance: Any, *, duplicate_field: str, duplicate_message: str) -> None:
    """Validate and insert, turning a unique-key race into the same clear error."""
    instance.full_clean()
    try:
        with transaction.atomic():
            instance.save()
    except IntegrityError as exc:
        raise ValidationError({duplicate_field: duplicate_message}) from exc


def _bump_environments(environment_ids: Iterable[int]) -> None:
    Environment.objects.filter(pk__in=list(environment_ids)).update(version=F("version") + 1)


def _bump_project(project: Project) -> None:
    Environment.objects.filter(project=project).update(version=F("version") + 1)


def _clean_key_list(keys: Iterable[Any], field: str) -> list[str]:
    cleaned: list[str] = []
    seen: set[str] = set()
    for raw in keys:
        if not isinstance(raw, str):
            raise ValidationError({field: f"{raw!r} is not a key."})
        key = raw.strip()
        if key and key not in seen:
            seen.add(key)
            cleaned.append(key)
    if len(cleaned) > MAX_KEYS_PER_LIST:
        raise ValidationError({field: f"At most {MAX_KEYS_PER_LIST} keys."})
    return cleaned


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
def membership_grant(*, project: Project, user: AbstractBaseUser, role: Role, actor: Actor) -> Membership:
    membership, created = Membership.objects.get_or_create(project=project, user=user, role=Role(role))
    if created:
        record(actor=actor, action=AuditAction.ROLE_GRANTED, target=membership, project=project,
               after={"user": user.get_username(), "role": role})
    return membership


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
    **changes: Any,
) -> Flag:
    """Edit a flag's contract. The key and value type are not editable: the key is the
    stable name applications evaluate, and retyping would invalidate every variation."""
    unknown = set(changes) - set(FLAG_EDITABLE_FIELDS)
    if unknown:
        raise ValidationError({name: "This field cannot be changed." for name in sorted(unknown)})
    flag = (
        Flag.objects.select_for_update(of=("self",)).select_related("fallback_variation", "owner_user").get(pk=flag.pk)
    )
    if expected_version is not None and flag.version != expected_version:
        raise ConflictError("Someone changed this flag since you opened it. Reload and try again.")
    before = flag_contract(flag)
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
    flag.refresh_from_db(fields=["version"])
    _bump_project(flag.project)
    changed = sorted(k for k in after if after[k] != before[k])
    record(
        actor=actor, action=AuditAction.FLAG_UPDATED, target=flag, project=flag.project, flag=flag,
        before={k: before[k] for k in changed}, after={k: after[k] for k in changed},
        summary=f"Changed {', '.join(changed)} of {flag.key}", reason=reason,
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
    *, variation: Variation, actor: Actor, reason: str = "", **changes: Any
) -> Variation:
    """Change a variation's name, value, description or risk rank; its key is immutable
    because targeting refers to it."""
    unknown = set(changes) - {"name", "value", "description", "risk_rank"}
    if unknown:
        raise ValidationError({name: "This field cannot be changed." for name in sorted(unknown)})
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
           summary=f"Changed {', '.join(changed)} of variation {variation.key}", reason=reason)
    return variation


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


# --- targeting -----------------------------------------------------------------------------


@transaction.atomic
def targeting_update(
    *,
    targeting: Targeting,
    actor: Actor,
    expected_version: int | None = None,
    reason: str = "",
    **changes: Any,
) -> Targeting:
    """Replace parts of one flag's targeting in one environment, validated as a whole.
    `expected_version` guards against overwriting a change made since the caller read it."""
    unknown = set(changes) - {"enabled", "targets", "rules", "default_serve", "assignment_unit"}
    if unknown:
        raise ValidationError({name: "Unknown targeting field." for name in sorted(unknown)})
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
    _validate_targeting(targeting)
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
        reason=reason,
    )
    return targeting


def _validate_targeting(targeting: Targeting) -> None:
    flag = targeting.flag
    variation_keys = set(flag.variations.values_list("key", flat=True))
    segment_keys = set(Segment.objects.filter(project_id=flag.project_id).values_list("key", flat=True))
    errors: dict[str, list[str]] = {}
    if not isinstance(targeting.enabled, bool):
        errors["enabled"] = ["Must be on or off."]
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
def segment_update(*, segment: Segment, actor: Actor, reason: str = "", **changes: Any) -> Segment:
    unknown = set(changes) - {"name", "description", "included_keys", "excluded_keys", "rules"}
    if unknown:
        raise ValidationError({name: "This field cannot be changed." for name in sorted(unknown)})
    segment = Segment.objects.select_for_update(of=("self",)).select_related("project").get(pk=segment.pk)
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
           summary=f"Changed {', '.join(changed)} of segment {segment.key}", reason=reason)
    return segment


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


def segment_clause_problems(clause: Any) -> list[str]:
    return [str(p) for p in validate_clause(clause)]


# --- SDK keys ------------------------------------------------------------------------------


def hash_sdk_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@transaction.atomic
def sdk_key_create(*, environment: Environment, name: str, actor: Actor) -> tuple[SdkKey, str]:
    """Create a server SDK key; the raw key is returned once and never stored."""
    raw_key = SDK_KEY_PREFIX + secrets.token_urlsafe(32)
    sdk_key = SdkKey(environment=environment, name=name or "server key", prefix=raw_key[:12],
                     key_hash=hash_sdk_key(raw_key), created_by=_user_or_none(actor))
    sdk_key.full_clean()
    sdk_key.save()
    record(actor=actor, action=AuditAction.SDK_KEY_CREATED, target=sdk_key, project=environment.project,
           environment=environment, after={"name": sdk_key.name, "prefix": sdk_key.prefix})
    return sdk_key, raw_key


@transaction.atomic
def sdk_key_revoke(*, sdk_key: SdkKey, actor: Actor, reason: str = "") -> SdkKey:
    sdk_key = SdkKey.objects.select_for_update(of=("self",)).select_related("environment__project").get(pk=sdk_key.pk)
    if sdk_key.revoked_at:
        return sdk_key
    sdk_key.revoked_at = timezone.now()
    sdk_key.save(update_fields=["revoked_at"])
    record(actor=actor, action=AuditAction.SDK_KEY_REVOKED, target=sdk_key, project=sdk_key.environment.project,
           environment=sdk_key.environment, after={"revoked_at": sdk_key.revoked_at.isoformat()}, reason=reason)
    return sdk_key


# --- lifecycle -----------------------------------------------------------------------------


def compute_stage(flag: Flag, targetings: Sequence[Targeting], *, today: datetime.date, now: datetime.datetime) -> str:
    """The lifecycle stage a flag is in, from its contract and its targeting.

    draft: on in no environment. active: serving somewhere. released: a temporary flag that
    has served one variation to everyone in a governed environment for at least
    FEATUREOPS_RELEASED_AFTER_DAYS (its targeting unchanged that long). cleanup due: a
    temporary flag whose review date has passed. Permanent flags never become cleanup due.
    Archived is set explicitly and never recomputed away.
    """
    if flag.stage == LifecycleStage.ARCHIVED:
        return LifecycleStage.ARCHIVED
    if flag.is_temporary and flag.review_date and flag.review_date < today:
        return LifecycleStage.CLEANUP_DUE
    enabled = [t for t in targetings if t.enabled]
    if not enabled:
        return LifecycleStage.DRAFT
    if flag.is_temporary:
        released_before = now - datetime.timedelta(days=settings.FEATUREOPS_RELEASED_AFTER_DAYS)
        for targeting in enabled:
            if (
                targeting.environment.is_governed
                and not targeting.targets
                and not targeting.rules
                and "variation" in targeting.default_serve
                and targeting.updated_at <= released_before
            ):
                return LifecycleStage.RELEASED
    return LifecycleStage.ACTIVE


def flag_lifecycle_recompute(*, actor: Actor, project: Project | None = None) -> int:
    """Recompute every flag's stage; each change is its own audited transaction, so a
    failure on one flag does not hold back the rest. Returns how many flags moved."""
    now = timezone.now()
    today = timezone.localdate(now)
    flags = Flag.objects.exclude(stage=LifecycleStage.ARCHIVED).prefetch_related("targetings__environment")
    if project is not None:
        flags = flags.filter(project=project)
    moved = 0
    for flag in flags.select_related("project"):
        stage = compute_stage(flag, list(flag.targetings.all()), today=today, now=now)
        if stage != flag.stage:
            moved += _flag_stage_set(flag=flag, stage=stage, actor=actor)
    return moved


@transaction.atomic
def _flag_stage_set(*, flag: Flag, stage: str, actor: Actor) -> int:
    locked = Flag.objects.select_for_update().get(pk=flag.pk)
    if locked.stage == stage or locked.stage == LifecycleStage.ARCHIVED:
        return 0
    before = locked.stage
    Flag.objects.filter(pk=flag.pk).update(stage=stage)
    record(actor=actor, action=AuditAction.FLAG_STAGE_CHANGED, target=flag, project=flag.project, flag=flag,
           before={"stage": before}, after={"stage": stage},
           summary=f"{flag.key} moved from {LifecycleStage(before).label} to {LifecycleStage(stage).label}")
    return 1


LIFECYCLE_JOB = SystemActor("lifecycle-job")
