"""Project webhooks: list, create (the signing secret answered once), change, delete, and send a
test event.

The console's rule (flags/webhook_views.py): project admins manage webhooks, reading the list
included (MANAGE_WEBHOOKS, the permission of SDK keys: both connect the project to other
systems). Writes go through webhooks.services, which checks the address (public internet
addresses only, unless the operator allows a private network): a refused address is a 422 on
`url`. The secret signs deliveries; it is in the creation's answer and nowhere else."""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

from django.core.exceptions import ValidationError
from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status

from api.auth import needs
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, page
from api.routers.segments import PathKey, storable
from api.schemas import StrictBool, answers
from flags import permissions
from flags.models import Project
from flags.shortcuts import first_or_404, project_for
from webhooks import selectors as webhook_selectors
from webhooks import services as webhook_services
from webhooks.constants import EVENT_PREFIXES
from webhooks.models import URL_MAX_LENGTH, Webhook, WebhookDelivery

router = Router(tags=["webhooks"])
EventFamily = Literal[tuple(prefix for prefix, _ in EVENT_PREFIXES)]  # type: ignore[valid-type]
EVENTS_HELP = "Event families (name prefixes) to receive; empty: every event. " + "; ".join(
    f"`{prefix}` {label.lower()}" for prefix, label in EVENT_PREFIXES) + "."
WebhookId = Annotated[int, Field(ge=1, le=2**63 - 1)]  # a bigint id: larger ones name nothing (422)


# --- shapes ----------------------------------------------------------------------------------

class WebhookOut(Schema):
    id: int
    url: str
    events: list[str]
    active: bool
    description: str
    created_at: datetime.datetime
    created_by: str | None


class WebhookCreated(WebhookOut):
    secret: str = Field(description="The signing secret (HMAC-SHA256 of “timestamp.body”). Answered here only: "
                                    "store it in the receiver now; it cannot be read again.")


class WebhookPage(Schema):
    items: list[WebhookOut]
    next_cursor: str | None


class WebhookCreate(Schema):
    url: str = Field(min_length=1, max_length=URL_MAX_LENGTH, description="An http(s) address on the public internet.")
    events: list[EventFamily] = Field(default_factory=list, description=EVENTS_HELP)
    description: str = Field("", max_length=200, description="What receives the events.")


class WebhookPatch(Schema):
    """Only the fields sent change. Deactivating abandons the pending retries."""

    # `str = Field(None)`: may be left out, may not be null (the default is not validated).
    url: str = Field(None, min_length=1, max_length=URL_MAX_LENGTH)
    events: list[EventFamily] = Field(None, description=EVENTS_HELP)
    active: StrictBool = Field(None)
    description: str = Field(None, max_length=200)


class WebhookFilters(Schema):
    cursor: str | None = Field(None, max_length=500)
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class DeliveryOut(Schema):
    id: str = Field(description="The delivery id the receiver sees (X-FeatureOps-Delivery).")
    webhook: int
    event: str
    status: str
    created_at: datetime.datetime


# --- helpers -----------------------------------------------------------------------------------

def _webhook_out(webhook: Webhook) -> dict[str, Any]:
    return {"id": webhook.pk, "url": webhook.url, "events": list(webhook.events), "active": webhook.active,
            "description": webhook.description, "created_at": webhook.created_at,
            "created_by": webhook.created_by.get_username() if webhook.created_by else None}


def _managed_project(request: HttpRequest, project_key: str) -> Project:
    project = project_for(request, project_key)
    permissions.MANAGE_WEBHOOKS.require(request.user, project)
    return project


def _webhook(project: Project, webhook_id: int) -> Webhook:
    return first_or_404(webhook_selectors.project_webhooks(project_id=project.pk).filter(pk=webhook_id), "webhook")


# --- endpoints ---------------------------------------------------------------------------------

@router.get("/projects/{project_key}/webhooks", response=answers({200: WebhookPage}),
            summary="The project's webhooks (never their secrets)")
def webhook_list(request: HttpRequest, project_key: PathKey, filters: Query[WebhookFilters]) -> Any:
    needs(request, "read")
    project = _managed_project(request, project_key)
    webhooks, next_cursor = page(webhook_selectors.project_webhooks(project_id=project.pk), order=("id",),
                                 cursor=filters.cursor, limit=filters.limit, key=lambda webhook: [webhook.pk])
    return {"items": [_webhook_out(webhook) for webhook in webhooks], "next_cursor": next_cursor}


@router.post("/projects/{project_key}/webhooks", response=answers({201: WebhookCreated}, write=True),
             summary="Create a webhook; the answer holds its signing secret, once")
def webhook_create(request: HttpRequest, project_key: PathKey, payload: WebhookCreate) -> Any:
    needs(request, "write")
    project = _managed_project(request, project_key)
    storable(payload.url, "url")
    storable(payload.description, "description")
    webhook, secret = webhook_services.webhook_create(
        project_id=project.pk, project_label=str(project), url=payload.url, events=list(payload.events),
        description=payload.description, actor=request.user)
    return Status(201, {**_webhook_out(webhook), "secret": secret})


@router.patch("/projects/{project_key}/webhooks/{webhook_id}", response=answers({200: WebhookOut}, write=True),
              summary="Change a webhook's address, events, description or active flag")
def webhook_patch(request: HttpRequest, project_key: PathKey, webhook_id: WebhookId, payload: WebhookPatch) -> Any:
    needs(request, "write")
    project = _managed_project(request, project_key)
    webhook = _webhook(project, webhook_id)
    changes = payload.dict(exclude_unset=True)
    for name, value in changes.items():
        if value is None:
            raise ValidationError({name: "This field cannot be null."})
        storable(value, name)
    webhook_services.webhook_update(webhook=webhook, actor=request.user, project_label=str(project), **changes)
    return Status(200, _webhook_out(_webhook(project, webhook_id)))


@router.delete("/projects/{project_key}/webhooks/{webhook_id}", response=answers({204: None}, write=True),
               summary="Delete a webhook with its delivery log")
def webhook_delete(request: HttpRequest, project_key: PathKey, webhook_id: WebhookId) -> Any:
    needs(request, "write")
    project = _managed_project(request, project_key)
    webhook_services.webhook_delete(webhook=_webhook(project, webhook_id), actor=request.user,
                                    project_label=str(project))
    return Status(204, None)


@router.post("/projects/{project_key}/webhooks/{webhook_id}/test", response=answers({202: DeliveryOut}, write=True),
             summary="Queue a webhook.test event for this webhook (it must be active)")
def webhook_test(request: HttpRequest, project_key: PathKey, webhook_id: WebhookId) -> Any:
    needs(request, "write")
    project = _managed_project(request, project_key)
    delivery: WebhookDelivery = webhook_services.webhook_send_test(webhook=_webhook(project, webhook_id),
                                                                   actor=request.user)
    return Status(202, {"id": str(delivery.uuid), "webhook": delivery.webhook_id, "event": delivery.event,
                        "status": delivery.status, "created_at": delivery.created_at})
