"""Operations: the kill switch, incident mode and the follow-ups they leave.

Making things safer never waits for an approval: an operator sends a flag (kill switch) or every
flag of an environment (incident mode) to its fallback at once, with a reason; the owner and the
approvers hear of it, and a follow-up stays open until a second person acknowledges it. The rules
and services are the console's (`flags.permissions`, `rollouts.change_control`)."""

from __future__ import annotations

import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema, Status

from api.auth import needs
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from api.routers.catalog import TargetingOut
from api.routers.change_requests import IdPath, needs_one_of, newest_first
from api.schemas import answers
from api.versions import etag
from flags import permissions
from flags.constants import BehaviorSurface
from flags.models import Project, Targeting
from flags.shortcuts import first_or_404, flag_for, project_for
from rollouts.change_control import follow_ups, incident_mode, kill_switch
from rollouts.models import FollowUp, Incident

router = Router(tags=["operations"])


# --- shapes ----------------------------------------------------------------------------------

class KillSwitchIn(Schema):
    reason: str = Field(description="Required: it goes to the audit trail, the owner and the approvers.")


class IncidentOut(Schema):
    id: int
    environment: str
    surfaces: list[str] = Field(description="The behavior surfaces it stopped; empty: every flag.")
    reason: str
    started_by: str
    started_at: datetime.datetime
    active: bool
    flags: list[str] = Field(description="The flags it sent to their fallbacks.")
    lifted_by: str | None
    lifted_at: datetime.datetime | None
    lift_reason: str


class IncidentLiftedOut(IncidentOut):
    restored: list[str] = Field(description="Flags turned back on.")
    left: list[str] = Field(description="Flags left off: changed since, or no longer allowed on.")


class IncidentPage(Schema):
    items: list[IncidentOut]
    next_cursor: str | None


class IncidentFilters(Schema):
    active: bool | None = Field(None, description="Only incidents still on (true) or lifted (false).")
    environment: str = Field("", max_length=100)
    cursor: str | None = Field(None, max_length=500)
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class IncidentStartIn(Schema):
    environment: str = Field(max_length=100, description="An environment's key.")
    surfaces: list[BehaviorSurface] = Field(default_factory=list, max_length=20,
                                            description="Only flags of these behavior surfaces; empty: every flag.")
    reason: str


class IncidentLiftIn(Schema):
    reason: str


class FollowUpOut(Schema):
    id: int
    kind: str
    title: str
    reason: str
    environment: str
    flag: str | None
    incident: int | None
    opened_by: str
    created_at: datetime.datetime
    acknowledged_by: str | None
    acknowledged_at: datetime.datetime | None
    note: str


class FollowUpPage(Schema):
    items: list[FollowUpOut]
    next_cursor: str | None


class FollowUpFilters(Schema):
    open: bool | None = Field(None, description="Only follow-ups waiting for acknowledgement (true), or done (false).")
    flag: str = Field("", max_length=100)
    environment: str = Field("", max_length=100)
    cursor: str | None = Field(None, max_length=500)
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class FollowUpAcknowledgeIn(Schema):
    note: str = Field(description="What was found, what happens next.")


# --- helpers ---------------------------------------------------------------------------------

def _incident_out(incident: Incident) -> dict[str, Any]:
    return {"id": incident.pk, "environment": incident.environment.key, "surfaces": incident.surfaces,
            "reason": incident.reason, "started_by": incident.started_by_label, "started_at": incident.started_at,
            "active": incident.active, "flags": [entry["flag"] for entry in incident.affected],
            "lifted_by": incident.lifted_by.get_username() if incident.lifted_by else None,
            "lifted_at": incident.lifted_at, "lift_reason": incident.lift_reason}


def _incidents(project: Project) -> Any:
    return Incident.objects.filter(project=project).select_related("environment", "lifted_by")


def _follow_up_out(follow_up: FollowUp) -> dict[str, Any]:
    return {"id": follow_up.pk, "kind": follow_up.kind, "title": follow_up.title, "reason": follow_up.reason,
            "environment": follow_up.environment.key, "flag": follow_up.flag.key if follow_up.flag_id else None,
            "incident": follow_up.incident_id, "opened_by": follow_up.opened_by_label,
            "created_at": follow_up.created_at,
            "acknowledged_by": follow_up.acknowledged_by.get_username() if follow_up.acknowledged_by else None,
            "acknowledged_at": follow_up.acknowledged_at, "note": follow_up.note}


def _follow_ups(project: Project) -> Any:
    return FollowUp.objects.filter(project=project).select_related("environment", "flag", "acknowledged_by")


# --- the kill switch -------------------------------------------------------------------------

@router.post("/projects/{project_key}/flags/{flag_key}/kill-switch/{environment_key}",
             response=answers({200: TargetingOut}, write=True),
             summary="Flip a kill switch: the flag serves its fallback to everyone in the environment, at once")
def kill_switch_flip(request: HttpRequest, response: HttpResponse, payload: KillSwitchIn, project_key: str,
                     flag_key: str, environment_key: str) -> Any:
    needs(request, "operate")
    project = project_for(request, project_key)
    flag = flag_for(project, flag_key)
    targeting = first_or_404(Targeting.objects.filter(flag=flag, environment__key=environment_key), "environment")
    permissions.FLIP_KILL_SWITCH.require(request.user, project)
    updated = kill_switch.killswitch_flip(targeting=targeting, reason=payload.reason, actor=request.user)
    updated = Targeting.objects.select_related("environment").get(pk=updated.pk)
    response["ETag"] = etag(updated.version)
    return {"environment": updated.environment.key, "governed": updated.environment.is_governed,
            "enabled": updated.enabled, "targets": updated.targets, "rules": updated.rules,
            "default_serve": updated.default_serve, "assignment_unit": updated.assignment_unit,
            "version": updated.version}


# --- incident mode ---------------------------------------------------------------------------

@router.get("/projects/{project_key}/incidents", response=answers({200: IncidentPage}),
            summary="Incidents, newest first")
def incident_list(request: HttpRequest, filters: Query[IncidentFilters], project_key: str) -> Any:
    needs(request, "read")
    incidents = _incidents(project_for(request, project_key))
    if filters.active is not None:
        incidents = incidents.filter(lifted_at__isnull=filters.active)
    if filters.environment:
        incidents = incidents.filter(environment__key=filters.environment)
    rows, next_cursor = newest_first(incidents, cursor=filters.cursor, limit=filters.limit)
    return {"items": [_incident_out(incident) for incident in rows], "next_cursor": next_cursor}


@router.post("/projects/{project_key}/incidents", response=answers({201: IncidentOut}, write=True),
             summary="Start incident mode: every flag on in the environment (or of the surfaces) to its fallback")
def incident_start(request: HttpRequest, payload: IncidentStartIn, project_key: str) -> Any:
    needs(request, "operate")
    project = project_for(request, project_key)
    permissions.START_INCIDENT.require(request.user, project)
    environment = project.environments.filter(key=payload.environment).first()
    if environment is None:
        raise ValidationError({"environment": f"{payload.environment!r} is not an environment of this project."})
    incident = incident_mode.incident_start(environment=environment, surfaces=[str(s) for s in payload.surfaces],
                                            reason=payload.reason, actor=request.user)
    return Status(201, _incident_out(_incidents(project).get(pk=incident.pk)))


@router.post("/projects/{project_key}/incidents/{incident_id}/lift",
             response=answers({200: IncidentLiftedOut}, write=True),
             summary="Lift incident mode: the flags it stopped go back on, unless someone changed them since")
def incident_lift(request: HttpRequest, payload: IncidentLiftIn, project_key: str,
                  incident_id: int = IdPath) -> Any:
    needs(request, "operate")
    project = project_for(request, project_key)
    incident = first_or_404(_incidents(project).filter(pk=incident_id), "incident")
    permissions.LIFT_INCIDENT.require(request.user, project)
    lifted = incident_mode.incident_lift(incident=incident, reason=payload.reason, actor=request.user)
    return {**_incident_out(_incidents(project).get(pk=lifted.pk)), "restored": lifted.restored, "left": lifted.left}


# --- follow-ups ------------------------------------------------------------------------------

@router.get("/projects/{project_key}/follow-ups", response=answers({200: FollowUpPage}),
            summary="Follow-ups of moves to the fallback, newest first")
def follow_up_list(request: HttpRequest, filters: Query[FollowUpFilters], project_key: str) -> Any:
    needs(request, "read")
    follow_up_rows = _follow_ups(project_for(request, project_key))
    if filters.open is not None:
        follow_up_rows = follow_up_rows.filter(acknowledged_at__isnull=filters.open)
    if filters.flag:
        follow_up_rows = follow_up_rows.filter(flag__key=filters.flag)
    if filters.environment:
        follow_up_rows = follow_up_rows.filter(environment__key=filters.environment)
    rows, next_cursor = newest_first(follow_up_rows, cursor=filters.cursor, limit=filters.limit)
    return {"items": [_follow_up_out(follow_up) for follow_up in rows], "next_cursor": next_cursor}


@router.post("/projects/{project_key}/follow-ups/{follow_up_id}/acknowledge",
             response=answers({200: FollowUpOut}, write=True),
             summary="Acknowledge a follow-up: a second person says what was found and what happens next")
def follow_up_acknowledge(request: HttpRequest, payload: FollowUpAcknowledgeIn, project_key: str,
                          follow_up_id: int = IdPath) -> Any:
    needs_one_of(request, "write", "approve", "operate")
    project = project_for(request, project_key)
    follow_up = first_or_404(_follow_ups(project).filter(pk=follow_up_id), "follow-up")
    permissions.ACKNOWLEDGE.require(request.user, project)
    follow_ups.follow_up_acknowledge(follow_up=follow_up, note=payload.note, actor=request.user)
    return _follow_up_out(_follow_ups(project).get(pk=follow_up_id))
