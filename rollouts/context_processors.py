from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from rollouts.selectors import waiting_count


def approvals(request: HttpRequest) -> dict[str, Any]:
    """How many change requests wait for this person's decision: one query, only when a
    template shows it."""
    return {"waiting_approvals": SimpleLazyObject(lambda: waiting_count(request.user))}
