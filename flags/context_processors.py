from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from flags.permissions import audit_project_ids


def navigation(request: HttpRequest) -> dict[str, Any]:
    """Whether to show the audit trail in the navigation; evaluated only when a template asks."""
    return {"can_view_audit": SimpleLazyObject(lambda: bool(audit_project_ids(request.user)))}
