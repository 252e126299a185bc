"""Projects, environments, flags (their contract), variations and targeting.

Writes go through the same services and permission rules as the console's pages. Targeting in a
governed environment, a new fallback or JSON Schema, and a new value for a served variation go
through change control: what raises risk answers 202 with the change request it opened, the rest
applies at once (200). `If-Match` with the resource's ETag refuses a stale write (412)."""

from __future__ import annotations

from typing import Any, Literal

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db.models import Prefetch, TextField
from django.db.models.functions import Cast
from django.http import Http404, HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema, Status

from api.answers import held
from api.auth import needs
from api.json import dumps
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, page
from api.problems import ApiError
from api.schemas import ChangeRequestBrief, IsoDate, StrictBool, StrictInt, answers
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
    risk_rank: StrictInt = Field(0, ge=0, le=32767)


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
    review_date: IsoDate | None = None
    cleanup_rule: str = ""
    primary_metric: str = Field("", max_length=100)
    guardrail_metrics: list[str] = Field(default_factory=list, max_length=50)
    rollback_action: str = ""
    first_audience: str = Field("", max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=50)


class FlagPatch(Schema):
    """Only the fields sent change. A new fallback or JSON Schema of a flag served in a governed
    environment waits for approval (202); the rest saves at once. Only `value_schema`,
    `owner_user` and `review_date` may be null (to clear them)."""

    # `str = Field(None)`: may be left out, may not be null (the default is not validated).
    name: str = Field(None, min_length=1, max_length=200)
    description: str = Field(None)
    behavior_surface: BehaviorSurface = Field(None)
    lifetime: Lifetime = Field(None)
    value_schema: dict[str, Any] | None = None
    fallback_variation: str = Field(None, min_length=1, max_length=100)
    owner_user: str | None = None
    owner_team: str = Field(None, max_length=100)
    review_date: IsoDate | None = None
    cleanup_rule: str = Field(None)
    primary_metric: str = Field(None, max_length=100)
    guardrail_metrics: list[str] = Field(None, max_length=50)
    rollback_action: str = Field(None)
    first_audience: str = Field(None, max_length=200)
    tags: list[str] = Field(None, max_length=50)
    reason: str = Field("", description="Why: required when part of the change waits for approval.")


class VariationPatch(Schema):
    name: str = Field(None, max_length=200)
    value: Any = None
    description: str = Field(None)
    risk_rank: StrictInt = Field(None, ge=0, le=32767)
    reason: str = ""


class TargetingPatch(Schema):
    """Only the fields sent change; the result is validated as a whole."""

    enabled: StrictBool = Field(None)
    targets: list[dict[str, Any]] = Field(None, max_length=1000)
    rules: list[dict[str, Any]] = Field(None, max_length=1000)
    default_serve: dict[str, Any] = Field(None)
    assignment_unit: str = Field(None, max_length=100)
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


# A page of 200 flags holds 600 variations and 600 targetings, about 750 KB of JSON, most of it
# the JSON columns (rules, targets, values). The list reads plain rows in four queries whatever
# the page's size, and takes those columns as the database's own JSON text, written into the
# answer as it is: no model instances, no decoding and encoding again, no second validation of
# the answer by django-ninja. bench/api_flag_list.py: a page of 200 took ~315 ms (p95 ~450) with
# prefetched instances, ~45-50 ms (p95 < 80) this way. Each item is what `_flag_out` answers for
# the flag, but for whitespace inside the JSON columns (the benchmark compares them).
_FLAG_COLUMNS = ("pk", "key", "name", "description", "behavior_surface", "value_type", "fallback_variation__key",
                 "owner_user__username", "owner_team", "lifetime", "review_date", "cleanup_rule", "primary_metric",
                 "rollback_action", "first_audience", "stage", "version", "archived_at")


def _text(field: str) -> Cast:
    return Cast(field, output_field=TextField())


def _spliced(scalars: dict[str, Any], **json_text: str | None) -> str:
    """`scalars` as a JSON object, with members whose values are already JSON text."""
    members = "".join(f',"{name}":{"null" if text is None else text}' for name, text in json_text.items())
    return dumps(scalars)[:-1] + members + "}"


def _flag_page(rows: list[dict[str, Any]], next_cursor: str | None) -> str:
    ids = [row["pk"] for row in rows]
    variations: dict[int, list[str]] = {pk: [] for pk in ids}
    for flag_id, key, name, description, risk_rank, value in (
            Variation.objects.filter(flag_id__in=ids).order_by("sort_order", "id")
            .values_list("flag_id", "key", "name", "description", "risk_rank", _text("value"))):
        variations[flag_id].append(_spliced({"key": key, "name": name, "description": description,
                                             "risk_rank": risk_rank}, value=value))
    targeting: dict[int, list[str]] = {pk: [] for pk in ids}
    for flag_id, environment, governed, enabled, unit, version, targets, rules, default_serve in (
            Targeting.objects.filter(flag_id__in=ids).order_by("environment__sort_order", "environment__key")
            .values_list("flag_id", "environment__key", "environment__is_governed", "enabled", "assignment_unit",
                         "version", _text("targets"), _text("rules"), _text("default_serve"))):
        targeting[flag_id].append(_spliced(
            {"environment": environment, "governed": governed, "enabled": enabled, "assignment_unit": unit,
             "version": version}, targets=targets, rules=rules, default_serve=default_serve))
    tags: dict[int, list[str]] = {pk: [] for pk in ids}
    for flag_id, name in Flag.tags.through.objects.filter(flag_id__in=ids).values_list("flag_id", "tag__name"):
        tags[flag_id].append(name)
    items = [_spliced({
        "key": row["key"], "name": row["name"], "description": row["description"],
        "behavior_surface": row["behavior_surface"], "value_type": row["value_type"],
        "fallback_variation": row["fallback_variation__key"], "owner_user": row["owner_user__username"],
        "owner_team": row["owner_team"], "lifetime": row["lifetime"],
        "review_date": row["review_date"].isoformat() if row["review_date"] else None,
        "cleanup_rule": row["cleanup_rule"], "primary_metric": row["primary_metric"],
        "rollback_action": row["rollback_action"], "first_audience": row["first_audience"],
        "tags": sorted(tags[row["pk"]]), "stage": row["stage"], "version": row["version"],
        "archived": row["archived_at"] is not None,
    }, guardrail_metrics=row["guardrail_metrics_json"], value_schema=row["json_schema_json"],
        variations="[" + ",".join(variations[row["pk"]]) + "]",
        targeting="[" + ",".join(targeting[row["pk"]]) + "]") for row in rows]
    return '{"items":[' + ",".join(items) + '],"next_cursor":' + dumps(next_cursor) + "}"


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
    rows = (Flag.objects.filter(project=project, pk__in=ids)
            .values(*_FLAG_COLUMNS, guardrail_metrics_json=_text("guardrail_metrics"), json_schema_json=_text("json_schema")))
    rows, next_cursor = page(rows, order=("key",), cursor=filters.cursor, limit=filters.limit,
                             key=lambda row: [row["key"]])
    return HttpResponse(_flag_page(rows, next_cursor), content_type="application/json")


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
    return Status(201, variation_state(variation))


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
    variation, change_request = submitting.variation_change_submit(variation=variation, actor=request.user,
                                                                   reason=reason, **sent)
    if change_request is not None:
        return held(request, change_request)
    return Status(200, variation_state(variation))


@router.delete("/projects/{project_key}/flags/{flag_key}/variations/{variation_key}",
               response=answers({204: None}, write=True))
def variation_delete(request: HttpRequest, project_key: str, flag_key: str, variation_key: str) -> Any:
    needs(request, "write")
    flag = _flag(project_for(request, project_key), flag_key)
    _refuse(permissions.DELETE_VARIATIONS, request, flag)
    flag_services.variation_delete(variation=_variation(flag, variation_key), actor=request.user)
    return Status(204, None)


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
    if not changes:
        raise ApiError(422, "invalid", "Send at least one targeting field to change.")
    result = submitting.targeting_change_submit(targeting=targeting, changes=changes, reason=reason,
                                                actor=request.user, expected_version=expected_version(request))
    if not isinstance(result, Targeting):
        return held(request, result)
    result = Targeting.objects.select_related("environment").get(pk=result.pk)
    return _json(_targeting_out(result), version=result.version)
