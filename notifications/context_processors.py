from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from notifications.selectors import unread_count


def unread(request: HttpRequest) -> dict[str, Any]:
    """The navigation's unread count; counted only when a template asks (0 for anonymous visitors)."""

    def count() -> int:
        user = getattr(request, "user", None)  # absent when a page renders before the auth middleware
        return unread_count(user) if user is not None else 0

    return {"unread_notifications": SimpleLazyObject(count)}
