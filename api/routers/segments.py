"""Segments: reusable audiences (included keys, excluded keys, attribute rules).

The same rules and services as the console's segment pages (flags/views.py for the list and
delete, rollouts/segment_views.py for the editor): creating and editing need EDIT_SEGMENTS,
deleting DELETE_SEGMENTS. An edit goes through change control: a segment that decides who a
governed environment serves changes at once only when that raises no risk there, and otherwise
answers 202 with the change request it opened. A segment still used by targeting or by another
segment is not deleted (409). `If-Match` with the segment's ETag refuses a stale edit (412)."""

from __future__ import annotations

import datetime
import math
from typing import Annotated, Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema, Status
from pydantic import StringConstraints

from api.answers import held
from api.auth import needs
from api.json import dumps
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, page
from api.problems import ApiError
from api.schemas import ChangeRequestBrief, answers
from api.versions import etag, expected_version
from flags import permissions, selectors
from flags import services as flag_services
from flags.constants import KEY_PATTERN
from flags.evaluation.targeting_schema import referenced_segments
from flags.models import Project, Segment, Targeting
from flags.shortcuts import first_or_404, project_for
from rollouts.change_control import submitting

router = Router(tags=["segments"])
# A project's or segment's key in a path: anything else names nothing (422, not a lookup).
PathKey = Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
KEY_LIST_LIMIT = 10_000


# --- shapes ----------------------------------------------------------------------------------

class SegmentOut(Schema):
    key: str
    name: str
    description: str
    included_keys: list[str]
    excluded_keys: list[str]
    rules: list[dict[str, Any]]
    version: int
    updated_at: datetime.datetime
    used_by: list[str] = Field(description="Where the segment is used: “<flag> in <environment>” for targeting "
                                           "rules, “segment <key>” for other segments' rules. A used segment "
                                           "cannot be deleted.")


class SegmentPage(Schema):
    items: list[SegmentOut]
    next_cursor: str | None


class SegmentCreate(Schema):
    key: str = Field(min_length=1, max_length=100, pattern=KEY_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    included_keys: list[str] = Field(default_factory=list, max_length=KEY_LIST_LIMIT,
                                     description="Unit keys always in the segment.")
    excluded_keys: list[str] = Field(default_factory=list, max_length=KEY_LIST_LIMIT,
                                     description="Unit keys never in the segment, even when a rule matches.")
    rules: list[dict[str, Any]] = Field(default_factory=list, max_length=1000,
                                        description='A list of {"clauses": [...]}; the segment matches when any '
                                                    "rule does.")


class SegmentPatch(Schema):
    """Only the fields sent change. A change that raises risk in a governed environment whose
    rules use the segment waits for approval (202) and needs a reason."""

    # `str = Field(None)`: may be left out, may not be null (the default is not validated).
    name: str = Field(None, min_length=1, max_length=200)
    description: str = Field(None)
    included_keys: list[str] = Field(None, max_length=KEY_LIST_LIMIT)
    excluded_keys: list[str] = Field(None, max_length=KEY_LIST_LIMIT)
    rules: list[dict[str, Any]] = Field(None, max_length=1000)
    reason: str = Field("", description="Why: required when the change waits for approval.")


class SegmentFilters(Schema):
    cursor: str | None = Field(None, max_length=500)
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


# --- helpers -----------------------------------------------------------------------------------

def storable(value: Any, path: str) -> None:
    """Refuse (422, naming the field) what PostgreSQL cannot store: NUL characters in text and
    non-finite numbers in JSON. Anything else is the service's to judge."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationError({path: "Text may not contain NUL characters."})
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError({path: "Numbers must be finite."})
    elif isinstance(value, dict):
        for name, item in value.items():
            storable(name, path)
            storable(item, f"{path}.{name}" if path else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            storable(item, f"{path}.{index}")


def _usages_by_key(project: Project, segments: list[Segment]) -> dict[str, list[str]]:
    """What `services.segment_usages` says of each segment, for a whole page in two queries
    (targeting rules of every environment, the project's other segments) rather than two per
    segment: the console's segment list does the same."""
    usages: dict[str, list[str]] = {segment.key: [] for segment in segments}
    targetings = (Targeting.objects.filter(flag__project=project).order_by("flag__key", "environment__sort_order")
                  .values_list("flag__key", "environment__name", "rules"))
    for flag_key, environment_name, rules in targetings:
        for key in referenced_segments(rules) & usages.keys():
            usages[key].append(f"{flag_key} in {environment_name}")
    for other_key, other_rules in Segment.objects.filter(project=project).order_by("key").values_list("key", "rules"):
        for key in (referenced_segments(other_rules) - {other_key}) & usages.keys():
            usages[key].append(f"segment {other_key}")
    return usages


def _segment_out(segment: Segment, used_by: list[str]) -> dict[str, Any]:
    return {"key": segment.key, "name": segment.name, "description": segment.description,
            "included_keys": segment.included_keys, "excluded_keys": segment.excluded_keys, "rules": segment.rules,
            "version": segment.version, "updated_at": segment.updated_at, "used_by": used_by}


def _tagged(segment: Segment, status: int = 200) -> HttpResponse:
    response = HttpResponse(dumps(_segment_out(segment, flag_services.segment_usages(segment))), status=status,
                            content_type="application/json")
    response["ETag"] = etag(segment.version)
    return response


def _segment(project: Project, segment_key: str) -> Segment:
    return first_or_404(Segment.objects.filter(project=project, key=segment_key).select_related("project"), "segment")


# --- endpoints ---------------------------------------------------------------------------------

@router.get("/projects/{project_key}/segments", response=answers({200: SegmentPage}),
            summary="Segments, by key, with where each is used")
def segment_list(request: HttpRequest, project_key: PathKey, filters: Query[SegmentFilters]) -> Any:
    needs(request, "read")
    project = project_for(request, project_key)
    segments, next_cursor = page(selectors.segment_list(project), order=("key",), cursor=filters.cursor,
                                 limit=filters.limit, key=lambda segment: [segment.key])
    usages = _usages_by_key(project, segments)
    return {"items": [_segment_out(segment, usages[segment.key]) for segment in segments],
            "next_cursor": next_cursor}


@router.get("/projects/{project_key}/segments/{segment_key}", response=answers({200: SegmentOut}),
            summary="One segment; its ETag is its version")
def segment_get(request: HttpRequest, project_key: PathKey, segment_key: PathKey) -> Any:
    needs(request, "read")
    return _tagged(_segment(project_for(request, project_key), segment_key))


@router.post("/projects/{project_key}/segments", response=answers({201: SegmentOut}, write=True),
             summary="Create a segment")
def segment_create(request: HttpRequest, project_key: PathKey, payload: SegmentCreate) -> Any:
    needs(request, "write")
    project = project_for(request, project_key)
    permissions.EDIT_SEGMENTS.require(request.user, project)
    data = payload.dict()
    storable(data, "")
    segment = flag_services.segment_create(project=project, actor=request.user, **data)
    return _tagged(segment, status=201)


@router.patch("/projects/{project_key}/segments/{segment_key}",
              response=answers({200: SegmentOut, 202: ChangeRequestBrief}, write=True),
              summary="Edit a segment: applies at once, or answers 202 with the change request it opened")
def segment_patch(request: HttpRequest, project_key: PathKey, segment_key: PathKey,
                  payload: SegmentPatch) -> Any:
    needs(request, "write")
    project = project_for(request, project_key)
    segment = _segment(project, segment_key)
    permissions.EDIT_SEGMENTS.require(request.user, project)
    changes = payload.dict(exclude_unset=True)
    reason = changes.pop("reason", "")
    for name in [n for n, v in changes.items() if v is None]:
        raise ValidationError({name: "This field cannot be null."})
    if not changes:
        raise ApiError(422, "invalid", "Send at least one segment field to change.")
    storable(changes, "")
    storable(reason, "reason")
    result = submitting.segment_change_submit(segment=segment, changes=changes, actor=request.user, reason=reason,
                                              expected_version=expected_version(request))
    if not isinstance(result, Segment):
        return held(request, result)
    return _tagged(result)


@router.delete("/projects/{project_key}/segments/{segment_key}", response=answers({204: None}, write=True),
               summary="Delete a segment nothing uses (409 while targeting or another segment refers to it)")
def segment_delete(request: HttpRequest, project_key: PathKey, segment_key: PathKey) -> Any:
    needs(request, "write")
    project = project_for(request, project_key)
    segment = _segment(project, segment_key)
    permissions.DELETE_SEGMENTS.require(request.user, project)
    # The service refuses under the row's lock too; asking first gives the refusal its own code.
    used_by = flag_services.segment_usages(segment)
    if used_by:
        raise ApiError(409, "segment_in_use", f"Segment “{segment.key}” is used by {', '.join(used_by)}: remove "
                                              "those references before deleting it.")
    flag_services.segment_delete(segment=segment, actor=request.user)
    return Status(204, None)
