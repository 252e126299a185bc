"""The inbox. Function views; htmx requests get its fragments (notifications/_notification_list.html, _notification_row.html)
plus an out-of-band swap of the navigation's count (#nav-notifications).

Everything is loaded through request.user: another person's notification answers 404.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET, require_POST
from django_htmx.middleware import HtmxDetails

from notifications import selectors, services
from notifications.models import Notification

INBOX_TEMPLATE = "notifications/inbox.html"


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _with_nav_count(request: HtmxHttpRequest, response: HttpResponse) -> HttpResponse:
    """Append the navigation link, counted after the change, as an out-of-band swap."""
    response.write(render_to_string("notifications/_nav_link.html", {"oob": True}, request=request))
    return response


def _list_context(request: HtmxHttpRequest) -> dict[str, object]:
    notifications = selectors.inbox(request.user)
    return {"notifications": notifications, "has_unread": any(n.is_unread for n in notifications)}


@login_required
@require_GET
def inbox(request: HtmxHttpRequest) -> HttpResponse:
    return render(request, INBOX_TEMPLATE, _list_context(request))


@login_required
@require_POST
def mark_read(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    notification = get_object_or_404(Notification, pk=pk, recipient=request.user)
    services.mark_read(user=request.user, notification_ids=[notification.pk])
    if not request.htmx:
        return redirect("notifications:inbox")
    notification.refresh_from_db()
    response = render(request, "notifications/_notification_row.html", {"notification": notification})
    return _with_nav_count(request, response)


@login_required
@require_POST
def mark_all_read(request: HtmxHttpRequest) -> HttpResponse:
    services.mark_read(user=request.user)
    if not request.htmx:
        return redirect("notifications:inbox")
    response = render(request, "notifications/_notification_list.html", _list_context(request))
    return _with_nav_count(request, response)
