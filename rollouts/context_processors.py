from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from flags.fragments import stop_facts
from flags.models import Targeting
from rollouts.models import Incident
from rollouts.selectors import active_incidents, waiting


def _project_key(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return str(match.kwargs.get("project_key", "")) if match else ""


def _incidents(request: HttpRequest) -> list[Incident]:
    """The project's incidents in progress, once per request (the banner and the flag list
    share them)."""
    if not hasattr(request, "_featureops_incidents"):
        request._featureops_incidents = active_incidents(_project_key(request), request.user)  # type: ignore[attr-defined]
    return request._featureops_incidents  # type: ignore[attr-defined]


def _stopped(request: HttpRequest) -> dict[str, set[int]]:
    """Targetings of the page's project held off by the kill switch or by incident mode (the
    flag list's badges): three queries, whatever the number of flags."""
    key = _project_key(request)
    if not key or not request.user.is_authenticated:
        return {"killswitch": set(), "incident": set()}
    facts = stop_facts(Targeting.objects.filter(flag__project__key=key))
    active = {incident.pk for incident in _incidents(request)}
    return {"killswitch": {pk for pk, fact in facts.items() if fact.cause == "killswitch"},
            "incident": {pk for pk, fact in facts.items() if fact.cause == "incident" and fact.incident_id in active}}


def approvals(request: HttpRequest) -> dict[str, Any]:
    """What waits for this person (change requests to decide, follow-ups to acknowledge), the
    incident banner of the page's project, and which of its flags are stopped. Each is lazy:
    queried only when a template shows it (the banner is one query)."""
    return {
        "waiting_approvals": SimpleLazyObject(lambda: waiting(request.user)),
        "active_incidents": SimpleLazyObject(lambda: _incidents(request)),
        "stopped_targetings": SimpleLazyObject(lambda: _stopped(request)),
    }
