"""Projects, environments, flags (their contract), variations and targeting.

Writes go through the same services and permission rules as the console's pages. Targeting in a
governed environment, a new fallback or JSON Schema, and a new value for a served variation go
through change control: what raises risk answers 202 with the change request it opened, the rest
applies at once (200). `If-Match` with the resource's ETag refuses a stale write (412)."""

from __future__ import annotations

import datetime
from typing import Any, Literal

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema

from api.answers import held
from api.auth import needs
from api.json import dumps
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, page
from api.problems import ApiError
from api.schemas import ChangeRequestBrief, answers
from api.versions import etag, expected_version
from flags import permissions, selectors
from flags import services as flag_services
from flags.constants import BehaviorSurface, LifecycleStage, Lifetime, Role, ValueType
from flags.models import Environment, Flag, Project, Targeting, Variation
from flags.row_states import flag_contract, variation_state
from flags.shortcuts import first_or_404, project_for
from rollouts.change_control import submitting

router = Router(tags=["catalog"])
Key = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_.-]*$")


# --- shapes ----------------------------------------------------------------------------------

class ProjectOut(Schema):
    key: str
    name: str
    description: str
    time_zone: str
    roles: list[str] = Field(description="The roles the token's account holds here.")


class EnvironmentOut(Schema):
    key: str
    name: str
    governed: bool
    version: int


class VariationOut(Schema):
    key: str
    name: str
    value: Any
    description: str
    risk_rank: int


class TargetingOut(Schema):
    environment: str
    governed: bool
    enabled: bool
    targets: list[dict[str, Any]]
    rules: list[dict[str, Any]]
    default_serve: dict[str, Any]
    assignment_unit: str
    version: int


class FlagOut(Schema):
    key: str
    name: str
    description: str
    behavior_surface: str
    value_type: str
    value_schema: dict[str, Any] | None = Field(description="JSON flags: the JSON Schema every value meets.")
    fallback_variation: str | None
    owner_user: str | None
    owner_team: str
    lifetime: str
    review_date: str | None
    cleanup_rule: str
    primary_metric: str
    guardrail_metrics: list[str]
    rollback_action: str
    first_audience: str
    tags: list[str]
    stage: str
    version: int
    archived: bool
    variations: list[VariationOut]
    targeting: list[TargetingOut]


class FlagPage(Schema):
    items: list[FlagOut]
    next_cursor: str | None


class VariationIn(Schema):
    key: str = Key
    value: Any = Field(description="Typed by the flag's value type.")
    name: str = Field("", max_length=200)
    description: str = ""
    risk_rank: int = Field(0, ge=0, le=32767)


class FlagCreate(Schema):
    key: str = Key
    name: str = Field(min_length=1, max_length=200)
    behavior_surface: BehaviorSurface
    value_type: ValueType
    lifetime: Lifetime
    variations: list[VariationIn] = Field(min_length=1, max_length=100)
    fallback_variation: str = Field(min_length=1, max_length=100)
    value_schema: dict[str, Any] | None = Field(None, description="JSON flags: a JSON Schema for every value.")
    description: str = ""
    owner_user: str | None = Field(None, description="The username of a member with a role that changes things.")
    owner_team: str = Field("", max_length=100)
    review_date: datetime.date | None = None
    cleanup_rule: str = ""
    primary_metric: str = Field("", max_length=100)
    guardrail_metrics: list[str] = Field(default_factory=list, max_length=50)
    rollback_action: str = ""
    first_audience: str = Field("", max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=50)


class FlagPatch(Schema):
    """Only the fields sent change. A new fallback or JSON Schema of a flag served in a governed
    environment waits for approval (202); the rest saves at once."""

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = None
    behavior_surface: BehaviorSurface | None = None
    lifetime: Lifetime | None = None
    value_schema: dict[str, Any] | None = None
    fallback_variation: str | None = Field(None, min_length=1, max_length=100)
    owner_user: str | None = None
    owner_team: str | None = Field(None, max_length=100)
    review_date: datetime.date | None = None
    cleanup_rule: str | None = None
    primary_metric: str | None = Field(None, max_length=100)
    guardrail_metrics: list[str] | None = Field(None, max_length=50)
    rollback_action: str | None = None
    first_audience: str | None = Field(None, max_length=200)
    tags: list[str] | None = Field(None, max_length=50)
    reason: str = Field("", description="Why: required when part of the change waits for approval.")


class VariationPatch(Schema):
    name: str | None = Field(None, max_length=200)
    value: Any = None
    description: str | None = None
    risk_rank: int | None = Field(None, ge=0, le=32767)
    reason: str = ""


class TargetingPatch(Schema):
    """Only the fields sent change; the result is validated as a whole."""

    enabled: bool | None = None
    targets: list[dict[str, Any]] | None = Field(None, max_length=1000)
    rules: list[dict[str, Any]] | None = Field(None, max_length=1000)
    default_serve: dict[str, Any] | None = None
    assignment_unit: str | None = Field(None, max_length=100)
    reason: str = Field("", description="Why: required in a governed environment.")


class ArchiveIn(Schema):
    action: Literal["archive", "restore"] = "archive"
    reason: str = ""


class FlagFilters(Schema):
    q: str = Field("", max_length=100, description="In the key or name.")
    surface: str = Field("", max_length=32)
    owner: str = Field("", max_length=120, description="user:<id> or team:<name>, as the console's filter.")
    stage: LifecycleStage | Literal[""] = ""
    tag: str = Field("", max_length=50)
    cursor: str | None = Field(None, max_length=500)
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


# --- reading -----------------------------------------------------------------------------------

def _targeting_out(targeting: Targeting) -> dict[str, Any]:
    return {"environment": targeting.environment.key, "governed": targeting.environment.is_governed,
            "enabled": targeting.enabled, "targets": targeting.targets, "rules": targeting.rules,
            "default_serve": targeting.default_serve, "assignment_unit": targeting.assignment_unit,
            "version": targeting.version}


def _flag_out(flag: Flag) -> dict[str, Any]:
    contract = flag_contract(flag)
    contract["value_schema"] = contract.pop("json_schema")
    return {**contract, "version": flag.version, "archived": flag.archived_at is not None,
            "variations": [variation_state(v) for v in sorted(flag.variations.all(), key=lambda v: v.sort_order)],
            "targeting": [_targeting_out(t) for t in flag.targetings.all()]}


def _flags(project: Project) -> Any:
    return (Flag.objects.filter(project=project)
            .select_related("owner_user", "fallback_variation")
            .prefetch_related("tags", "variations",
                              Prefetch("targetings", queryset=Targeting.objects.select_related("environment")
                                       .order_by("environment__sort_order", "environment__key"))))


def _flag(project: Project, flag_key: str) -> Flag:
    return first_or_404(_flags(project).filter(key=flag_key), "flag")


def _json(data: Any, status: int = 200, version: int | None = None) -> HttpResponse:
    response = HttpResponse(dumps(data), status=status, content_type="application/json")
    if version is not None:
        response["ETag"] = etag(version)
    return response


@router.get("/projects", response=answers({200: list[ProjectOut]}), summary="Projects the token can see")
def project_list(request: HttpRequest) -> Any:
    needs(request, "read")
    projects = list(selectors.project_list_for(request.user))
    roles: dict[int, list[str]] = {}
    for project_id, role in (request.user.memberships.filter(project__in=projects)
                             .values_list("project_id", "role")):
        roles.setdefault(project_id, []).append(role)
    return [{"key": p.key, "name": p.name, "description": p.description, "time_zone": p.time_zone,
             "roles": sorted(roles.get(p.pk, []))} for p in projects]


@router.get("/projects/{project_key}/environments", response=answers({200: list[EnvironmentOut]}))
def environment_list(request: HttpRequest, project_key: str) -> Any:
    needs(request, "read")
    project = project_for(request, project_key)
    return [{"key": e.key, "name": e.name, "governed": e.is_governed, "version": e.version}
            for e in project.environments.order_by("sort_order", "key")]


@router.get("/projects/{project_key}/flags", response=answers({200: FlagPage}),
            summary="Flags with their variations and targeting, filtered as the console's list")
def flag_list(request: HttpRequest, project_key: str, filters: Query[FlagFilters]) -> Any:
    needs(request, "read")
    project = project_for(request, project_key)
    ids = selectors.flag_list(project, selectors.FlagFilters(
        q=filters.q, surface=filters.surface, owner=filters.owner, stage=filters.stage, tag=filters.tag,
    )).values("pk")
    flags, next_cursor = page(_flags(project).filter(pk__in=ids), order=("key",), cursor=filters.cursor,
                              limit=filters.limit, key=lambda flag: [flag.key])
    return {"items": [_flag_out(flag) for flag in flags], "next_cursor": next_cursor}


@router.get("/projects/{project_key}/flags/{flag_key}", response=answers({200: FlagOut}),
            summary="One flag; its ETag is the contract's version")
def flag_get(request: HttpRequest, project_key: str, flag_key: str) -> Any:
    needs(request, "read")
    flag = _flag(project_for(request, project_key), flag_key)
    return _json(_flag_out(flag), version=flag.version)


# --- writing -----------------------------------------------------------------------------------

def _owner(project: Project, username: str | None) -> Any:
    if not username:
        return None
    owner = (get_user_model().objects.filter(
        username=username, memberships__project=project,
        memberships__role__in=[r for r in Role.values if r != Role.AUDITOR]).first())
    if owner is None:
        raise ValidationError({"owner_user": f"{username!r} is not a member of this project with a role that "
                                             "changes things."})
    return owner


def _refuse(rule: permissions.Rule, request: HttpRequest, *objects: Any) -> None:
    rule.require(request.user, *objects)


@router.post("/projects/{project_key}/flags", response=answers({201: FlagOut}, write=True),
             summary="Create a flag (off in every environment)")
def flag_create(request: HttpRequest, project_key: str, payload: FlagCreate) -> Any:
    needs(request, "write")
    project = project_for(request, project_key)
    _refuse(permissions.CREATE_FLAGS, request, project)
    data = payload.dict()
    flag = flag_services.flag_create(
        project=project, actor=request.user, key=data["key"], name=data["name"],
        behavior_surface=data["behavior_surface"], value_type=data["value_type"], lifetime=data["lifetime"],
        variations=[{k: v for k, v in spec.items()} for spec in data["variations"]],
        fallback_variation_key=data["fallback_variation"], json_schema=data["value_schema"],
        description=data["description"], owner_user=_owner(project, data["owner_user"]),
        owner_team=data["owner_team"], review_date=data["review_date"], cleanup_rule=data["cleanup_rule"],
        primary_metric=data["primary_metric"], guardrail_metrics=data["guardrail_metrics"],
        rollback_action=data["rollback_action"], first_audience=data["first_audience"], tags=data["tags"])
    flag = _flag(project, flag.key)
    return _json(_flag_out(flag), status=201, version=flag.version)


@router.patch("/projects/{project_key}/flags/{flag_key}",
              response=answers({200: FlagOut, 202: ChangeRequestBrief}, write=True),
              summary="Edit a flag's contract; 202 when part of it waits for approval")
def flag_patch(request: HttpRequest, project_key: str, flag_key: str, payload: FlagPatch) -> Any:
    needs(request, "write")
    project = project_for(request, project_key)
    flag = first_or_404(Flag.objects.filter(project=project, key=flag_key)
                        .select_related("project", "owner_user", "fallback_variation"), "flag")
    _refuse(permissions.EDIT_CONTRACT, request, flag)
    sent = payload.dict(exclude_unset=True)
    reason = sent.pop("reason", "")
    fallback = sent.pop("fallback_variation", None)
    tags = sent.pop("tags", None)
    if "value_schema" in sent:
        sent["json_schema"] = sent.pop("value_schema")
    if "owner_user" in sent:
        sent["owner_user"] = _owner(project, sent["owner_user"])
    nullable = {"json_schema", "owner_user", "review_date"}
    for name in [n for n, v in sent.items() if v is None and n not in nullable]:
        raise ValidationError({name: "This field cannot be null."})
    if flag.value_type != ValueType.JSON and sent.get("json_schema") is not None:
        raise ValidationError({"value_schema": "Only JSON flags have a JSON Schema."})
    _, change_request = submitting.contract_change_submit(
        flag=flag, actor=request.user, reason=reason, expected_version=expected_version(request),
        fallback_variation_key=fallback, tags=tags, **sent)
    if change_request is not None:
        return held(request, change_request)
    flag = _flag(project, flag_key)
    return _json(_flag_out(flag), version=flag.version)


@router.post("/projects/{project_key}/flags/{flag_key}/archive", response=answers({200: FlagOut}, write=True),
             summary="Archive a flag (or restore it)")
def flag_archive(request: HttpRequest, project_key: str, flag_key: str, payload: ArchiveIn) -> Any:
    needs(request, "write")
    project = project_for(request, project_key)
    flag = _flag(project, flag_key)
    _refuse(permissions.ARCHIVE_FLAG, request, flag)
    if payload.action == "restore":
        flag_services.flag_restore(flag=flag, actor=request.user, reason=payload.reason)
    else:
        flag_services.flag_archive(flag=flag, actor=request.user, reason=payload.reason)
    flag = _flag(project, flag_key)
    return _json(_flag_out(flag), version=flag.version)


def _variation(flag: Flag, variation_key: str) -> Variation:
    return first_or_404(Variation.objects.filter(flag=flag, key=variation_key).select_related("flag__project"),
                        "variation")


@router.post("/projects/{project_key}/flags/{flag_key}/variations", response=answers({201: VariationOut}, write=True))
def variation_create(request: HttpRequest, project_key: str, flag_key: str, payload: VariationIn) -> Any:
    needs(request, "write")
    flag = _flag(project_for(request, project_key), flag_key)
    _refuse(permissions.ADD_VARIATIONS, request, flag)
    variation = flag_services.variation_create(flag=flag, actor=request.user, **payload.dict())
    return 201, variation_state(variation)


@router.patch("/projects/{project_key}/flags/{flag_key}/variations/{variation_key}",
              response=answers({200: VariationOut, 202: ChangeRequestBrief}, write=True),
              summary="Edit a variation; a new value for one served in a governed environment answers 202")
def variation_patch(request: HttpRequest, project_key: str, flag_key: str, variation_key: str,
                    payload: VariationPatch) -> Any:
    needs(request, "write")
    flag = _flag(project_for(request, project_key), flag_key)
    _refuse(permissions.EDIT_VARIATIONS, request, flag)
    variation = _variation(flag, variation_key)
    sent = payload.dict(exclude_unset=True)
    reason = sent.pop("reason", "")
    for name in [n for n, v in sent.items() if v is None and n != "value"]:
        raise ValidationError({name: "This field cannot be null."})
    variation, change_request = submitting.variation_change_submit(variation=variation, actor=request.user,
                                                                   reason=reason, **sent)
    if change_request is not None:
        return held(request, change_request)
    return 200, variation_state(variation)


@router.delete("/projects/{project_key}/flags/{flag_key}/variations/{variation_key}",
               response=answers({204: None}, write=True))
def variation_delete(request: HttpRequest, project_key: str, flag_key: str, variation_key: str) -> Any:
    needs(request, "write")
    flag = _flag(project_for(request, project_key), flag_key)
    _refuse(permissions.DELETE_VARIATIONS, request, flag)
    flag_services.variation_delete(variation=_variation(flag, variation_key), actor=request.user)
    return 204, None


def _targeting(flag: Flag, environment_key: str) -> Targeting:
    for targeting in flag.targetings.all():
        if targeting.environment.key == environment_key:
            return targeting
    raise Http404("No such environment.")


@router.get("/projects/{project_key}/flags/{flag_key}/targeting/{environment_key}",
            response=answers({200: TargetingOut}), summary="One environment's targeting; its ETag is its version")
def targeting_get(request: HttpRequest, project_key: str, flag_key: str, environment_key: str) -> Any:
    needs(request, "read")
    targeting = _targeting(_flag(project_for(request, project_key), flag_key), environment_key)
    return _json(_targeting_out(targeting), version=targeting.version)


@router.patch("/projects/{project_key}/flags/{flag_key}/targeting/{environment_key}",
              response=answers({200: TargetingOut, 202: ChangeRequestBrief}, write=True),
              summary="Change targeting: applies at once, or answers 202 with the change request it opened")
def targeting_patch(request: HttpRequest, project_key: str, flag_key: str, environment_key: str,
                    payload: TargetingPatch) -> Any:
    needs(request, "write")
    flag = _flag(project_for(request, project_key), flag_key)
    targeting = _targeting(flag, environment_key)
    environment: Environment = targeting.environment
    rule = permissions.PROPOSE_CHANGE if environment.is_governed else permissions.EDIT_TARGETING
    _refuse(rule, request, flag, environment)
    changes = payload.dict(exclude_unset=True)
    reason = changes.pop("reason", "")
    for name in [n for n, v in changes.items() if v is None]:
        raise ValidationError({name: "This field cannot be null."})
    if not changes:
        raise ApiError(422, "invalid", "Send at least one targeting field to change.")
    result = submitting.targeting_change_submit(targeting=targeting, changes=changes, reason=reason,
                                                actor=request.user, expected_version=expected_version(request))
    if not isinstance(result, Targeting):
        return held(request, result)
    result = Targeting.objects.select_related("environment").get(pk=result.pk)
    return _json(_targeting_out(result), version=result.version)
