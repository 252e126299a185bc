"""What the flag page's fragments render, for every app's views: a variation's row (also after
an inline save, governed or not) and an environment's targeting card (also after a toggle or a
kill switch). Views of other apps import these, never another app's view module."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.text import Truncator

from audit.constants import AuditAction
from audit.models import AuditEvent
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


# --- why a flag is off, from the audit trail --------------------------------------------------

# How a targeting row that turned a flag off reads in the audit trail (canonical JSON, no spaces).
TURNED_OFF = '"enabled":false'
INCIDENT_TARGET = "rollouts.incident"  # the audit target type of incident mode's rows


@dataclass(frozen=True)
class StopFact:
    """Why a flag is off in one environment: `cause` is "killswitch", "incident", "off" (a
    person turned it off) or "never" (not turned on here since it was made)."""

    cause: str
    actor: str = ""
    at: datetime.datetime | None = None
    reason: str = ""
    incident_id: int | None = None
    incident_lifted: bool = False


def stop_facts(targetings: QuerySet[Targeting]) -> dict[int, StopFact]:
    """For each targeting of `targetings` that is off: who stopped it, when, why, and whether
    that was the kill switch or incident mode. Read from the audit trail in three queries
    whatever the number of targetings: the last row that turned it off, and the kill switch
    or incident row recorded after it (audit rows of one transaction are consecutive, under
    the chain's lock, and a later stop would have written a later "turned off" row)."""
    turned_off = (AuditEvent.objects.filter(action=AuditAction.TARGETING_UPDATED, flag_id=OuterRef("flag_id"),
                                            environment_id=OuterRef("environment_id"), after__contains=TURNED_OFF)
                  .order_by("-id").values("id")[:1])
    killed = (AuditEvent.objects.filter(action=AuditAction.KILLSWITCH_FLIPPED, flag_id=OuterRef("flag_id"),
                                        environment_id=OuterRef("environment_id"), id__gt=OuterRef("off_id"))
              .order_by("id").values("id")[:1])
    incident = (AuditEvent.objects.filter(action=AuditAction.INCIDENT_STARTED, environment_id=OuterRef("environment_id"),
                                          id__gt=OuterRef("off_id"))
                .order_by("id").values("id")[:1])
    rows = list(targetings.filter(enabled=False).annotate(off_id=Subquery(turned_off))
                .annotate(kill_id=Subquery(killed), incident_row_id=Subquery(incident))
                .values_list("pk", "flag__key", "off_id", "kill_id", "incident_row_id"))
    if not rows:
        return {}
    events = AuditEvent.objects.in_bulk([i for row in rows for i in row[2:] if i is not None])
    facts: dict[int, StopFact] = {}
    for pk, flag_key, off_id, kill_id, incident_row_id in rows:
        off = events.get(off_id)
        if off is None:
            facts[pk] = StopFact("never")
            continue
        kill, started = events.get(kill_id), events.get(incident_row_id)
        if kill is not None:
            facts[pk] = StopFact("killswitch", kill.actor_label, kill.created_at, kill.reason)
        elif started is not None and flag_key in ((started.after or {}).get("flags") or []):
            facts[pk] = StopFact("incident", started.actor_label, started.created_at, started.reason,
                                 incident_id=int(started.target_id))
        else:
            facts[pk] = StopFact("off", off.actor_label, off.created_at, off.reason)
    incidents = {str(f.incident_id) for f in facts.values() if f.incident_id is not None}
    if incidents:
        lifted = set(AuditEvent.objects.filter(action=AuditAction.INCIDENT_LIFTED, target_type=INCIDENT_TARGET,
                                               target_id__in=incidents).values_list("target_id", flat=True))
        facts = {pk: StopFact(f.cause, f.actor, f.at, f.reason, f.incident_id, True)
                 if f.incident_id is not None and str(f.incident_id) in lifted else f for pk, f in facts.items()}
    return facts


def _flag_stop_facts(flag: Flag) -> dict[int, StopFact]:
    """The flag's facts for every environment, once per flag object (the flag page renders a
    card per environment from the same flag: no query per card)."""
    if "_stop_facts" not in flag.__dict__:
        flag.__dict__["_stop_facts"] = stop_facts(Targeting.objects.filter(flag_id=flag.pk))
    return flag.__dict__["_stop_facts"]


def served_when_off(flag: Flag) -> str:
    """The fallback's value, short: what everyone gets while the flag is off."""
    fallback = flag.fallback_variation
    if fallback is None:
        return ""
    return Truncator(" ".join(format_value(flag.value_type, fallback.value).split())).chars(40)


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
        # why it is off and what it serves meanwhile (the audit trail, batched per flag)
        "stop": None if targeting.enabled else _flag_stop_facts(flag).get(targeting.pk, StopFact("never")),
        "served_when_off": "" if targeting.enabled else served_when_off(flag),
    }


def targeting_card_context(request: HttpRequest, project: Project, flag: Flag, targeting: Targeting) -> dict[str, Any]:
    """What the flag page's card for one environment renders (also after htmx actions)."""
    return {"project": project, "flag": flag, "t": targeting_view(request, flag, targeting)}
