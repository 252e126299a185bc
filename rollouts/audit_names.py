"""Names and links of change control's and rollout plans' audit targets (change requests, rollout
plans, incidents, follow-ups), for the audit trail as it is read: see audit.naming. Their rows
recorded labels such as "CR-2 2@3" or "plan 1: 1@3 a → b"; people read "CR-2:
support_agent_tool_mode in Production" with a link to the request. One query per target type on
a page; a target that is gone keeps its recorded label."""

from __future__ import annotations

from collections.abc import Sequence

from django.urls import reverse
from django.utils import dateformat, timezone

from audit.models import AuditEvent
from audit.naming import TargetName, named, names, target_ids
from rollouts.models import ChangeRequest, FollowUp, Incident, RolloutPlan


def _in_place(by_id: dict[int, list[AuditEvent]], project_of: dict[int, int]) -> dict[int, list[AuditEvent]]:
    """Only the rows whose target belongs to the project the row was written in."""
    return {pk: [e for e in rows if project_of.get(pk) == e.project_id] for pk, rows in by_id.items()}


@names("rollouts.changerequest")
def change_request_names(events: Sequence[AuditEvent]) -> dict[int, TargetName]:
    by_id = target_ids(events)
    requests = {cr.pk: cr for cr in ChangeRequest.objects.filter(pk__in=by_id)
                .select_related("project", "flag", "segment", "environment")}
    found = {pk: TargetName(f"CR-{pk}: {cr.subject} in {cr.where}",
                            reverse("rollouts:change_request", kwargs={"project_key": cr.project.key, "pk": pk}))
             for pk, cr in requests.items()}
    return named(_in_place(by_id, {pk: cr.project_id for pk, cr in requests.items()}), found)


@names("rollouts.rolloutplan")
def plan_names(events: Sequence[AuditEvent]) -> dict[int, TargetName]:
    by_id = target_ids(events)
    plans = {p.pk: p for p in RolloutPlan.objects.filter(pk__in=by_id).select_related("project", "flag", "environment")}
    found = {pk: TargetName(f"rollout plan of {p.flag.key} in {p.environment.name}",
                            reverse("rollouts:plan_detail", kwargs={"project_key": p.project.key, "pk": pk}))
             for pk, p in plans.items()}
    return named(_in_place(by_id, {pk: p.project_id for pk, p in plans.items()}), found)


@names("rollouts.incident")
def incident_names(events: Sequence[AuditEvent]) -> dict[int, TargetName]:
    by_id = target_ids(events)
    incidents = {i.pk: i for i in Incident.objects.filter(pk__in=by_id).select_related("project", "environment")}
    found = {pk: TargetName(f"incident mode in {i.environment.name} "
                            f"(started {dateformat.format(timezone.localtime(i.started_at), 'j M H:i')})",
                            reverse("rollouts:incidents", kwargs={"project_key": i.project.key}))
             for pk, i in incidents.items()}
    return named(_in_place(by_id, {pk: i.project_id for pk, i in incidents.items()}), found)


@names("rollouts.followup")
def follow_up_names(events: Sequence[AuditEvent]) -> dict[int, TargetName]:
    by_id = target_ids(events)
    follow_ups = {f.pk: f for f in FollowUp.objects.filter(pk__in=by_id)}
    # Open follow-ups wait in the change-request inbox, beside the requests.
    found = {pk: TargetName(f"follow-up: {f.title}", reverse("rollouts:inbox") + "#follow-ups") for pk, f in follow_ups.items()}
    return named(_in_place(by_id, {pk: f.project_id for pk, f in follow_ups.items()}), found)
