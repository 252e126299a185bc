"""The navigation's System status link, with a warning when a queue has no live worker."""

from __future__ import annotations

from typing import Any

from django import template

from featureops_site import selectors
from flags.permissions import can_view_system_status

register = template.Library()


@register.inclusion_tag("ops/_nav_status.html", takes_context=True)
def system_status_link(context: template.Context) -> dict[str, Any]:
    """Only for those who may see the page (one query for a project admin, none for staff), then
    one query on the workers' rows; never the broker (that is the page's business)."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not can_view_system_status(user):
        return {"show": False}
    down = context.get("queues_without_worker")  # the status page has just computed it
    if down is None:
        down = selectors.queues_without_live_worker()
    return {"show": True, "queues_without_worker": down}


@register.filter
def seconds_ago(seconds: float | None) -> str:
    """12 s ago, 5 min ago, 3 h ago, 2 d ago."""
    if seconds is None:
        return "never"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"
