"""Webhooks for what the audit trail records: flag, variation, targeting and segment changes,
change-request decisions, kill switches and incident mode.

Wired through `settings.AUDIT_COMMIT_OBSERVERS`: `audit.record()` calls
`audit_event_committed` after the change's transaction commits, so a rolled-back change
fires nothing and the audit write path gains no query. It lives here rather than in
`webhooks` because the payload names the flag and project by key, which only `flags` can
look up, and `webhooks` stays a leaf. The event name is the audit action (`targeting.updated`,
`change_request.approved`…); a new action in one of these families fires too.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.urls import reverse

from audit.models import AuditEvent
from flags.models import Flag, Project
from webhooks.selectors import has_subscribers
from webhooks.services import dispatch

logger = logging.getLogger(__name__)

WEBHOOK_FAMILIES = ("flag.", "variation.", "targeting.", "segment.", "change_request.", "killswitch.", "incident.")


def audit_event_committed(event: AuditEvent) -> None:
    """Dispatch the event to the project's subscribed webhooks. Never raises: webhooks are a
    side effect of a change that has already committed."""
    try:
        if event.project_id is None or not event.action.startswith(WEBHOOK_FAMILIES):
            return
        if not has_subscribers(project_id=event.project_id, event=event.action):
            return  # the common case: one query, nothing else
        with transaction.atomic():
            dispatch(project_id=event.project_id, event=event.action, payload=event_payload(event))
    except Exception:
        logger.exception("Could not dispatch webhooks for audit event %s (%s).", event.pk, event.action)


def event_payload(event: AuditEvent) -> dict[str, Any]:
    """The envelope's `data` for an audit event: what happened, who did it, to what."""
    flag = project = None
    if event.flag_id is not None:
        flag = (Flag.objects.filter(pk=event.flag_id).values("key", "name", "project__key", "project__name")
                .first())
    if flag is None:
        project = Project.objects.filter(pk=event.project_id).values("key", "name").first()
    else:
        project = {"key": flag["project__key"], "name": flag["project__name"]}
    return {
        "audit_event_id": event.pk,
        "action": event.action,
        "summary": event.summary,
        "occurred_at": event.created_at.isoformat() if event.created_at else None,
        "actor": {"label": event.actor_label, "kind": event.actor_kind},
        "project": {"id": event.project_id, "key": project["key"] if project else None,
                    "name": project["name"] if project else event.project_label},
        "environment": ({"id": event.environment_id, "name": event.environment_label}
                        if event.environment_id is not None else None),
        "flag": _flag_part(event, flag),
        "target": {"type": event.target_type, "id": event.target_id, "label": event.target_label},
        "before": event.before,
        "after": event.after,
        "reason": event.reason,
        "change_request_id": event.change_request_id,
    }


def _flag_part(event: AuditEvent, flag: dict[str, Any] | None) -> dict[str, Any] | None:
    if event.flag_id is None:
        return None
    if flag is None:  # deleted since
        return {"id": event.flag_id, "key": None, "name": None, "url": None}
    path = reverse("flags:flag_detail", kwargs={"project_key": flag["project__key"], "flag_key": flag["key"]})
    return {"id": event.flag_id, "key": flag["key"], "name": flag["name"],
            "url": settings.CONSOLE_BASE_URL.rstrip("/") + path}
