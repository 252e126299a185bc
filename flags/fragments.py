"""What the flag page's fragments render, for every app's views: a variation's row (also after
an inline save, governed or not) and an environment's targeting card (also after a toggle or a
kill switch). Views of other apps import these, never another app's view module."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from flags import permissions, services
from flags.forms import format_value
from flags.models import Flag, Project, Targeting, Variation
from flags.permissions import can_edit_targeting
from flags.shortcuts import with_messages


def variation_view(flag: Flag, variation: Variation, governed: set[str]) -> dict[str, Any]:
    return {
        "variation": variation,
        "display_value": format_value(flag.value_type, variation.value),
        "is_fallback": flag.fallback_variation_id == variation.pk,
        # the flag serves in a governed environment: edits go through the governed editor, where
        # a served variation's new value or a lowered risk rank becomes a change request
        "governed": bool(governed),
    }


def variation_saved_response(request: HttpRequest, project: Project, flag: Flag, variation: Variation) -> HttpResponse:
    """After an inline save: the row, marked saved, with the messages (htmx); the page otherwise."""
    if not request.htmx:
        return redirect("flags:flag_detail", project_key=project.key, flag_key=flag.key)
    flag.refresh_from_db(fields=["fallback_variation"])
    response = render(request, "flags/_variation_row.html", {
        "project": project, "flag": flag, "can_edit": True, "just_saved": True,
        "row": variation_view(flag, variation, services.governed_served_variations(flag)),
    })
    return with_messages(request, response)


def targeting_view(request: HttpRequest, flag: Flag, targeting: Targeting) -> dict[str, Any]:
    project = flag.project
    governed = targeting.environment.is_governed
    can_propose = permissions.steers(request.user, flag)
    can_flip = permissions.FLIP_KILL_SWITCH.allows(request.user, project)
    return {
        "targeting": targeting,
        "environment": targeting.environment,
        "can_edit": can_edit_targeting(request.user, targeting.environment, flag),
        # Governed environments take proposals (change requests); operators flip kill switches anywhere.
        "can_propose": governed and can_propose,
        "can_flip": can_flip,
        # operators reduce exposure (a split back to the baseline) on the same page, at once
        "can_roll_back": governed and can_flip and not can_propose,
    }


def targeting_card_context(request: HttpRequest, project: Project, flag: Flag, targeting: Targeting) -> dict[str, Any]:
    """What the flag page's card for one environment renders (also after htmx actions)."""
    return {"project": project, "flag": flag, "t": targeting_view(request, flag, targeting)}
