"""Incident mode: every flag that is on in an environment (or those of chosen behavior
surfaces) goes to its fallback in one transaction; lifting turns back on exactly those that
would serve again what they served before.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import record
from flags import services as flag_services
from flags.constants import BehaviorSurface
from flags.models import Environment, Targeting
from flags.permissions import LIFT_INCIDENT, START_INCIDENT
from flags.served_state.guard import (
    Authorization,
    governed_write,
    pair_key,
    served_states,
)
from notifications.services import notify
from rollouts.actors import require_reason
from rollouts.change_control import observers
from rollouts.change_control.follow_ups import open_follow_up
from rollouts.change_control.notices import notify_plan_still_paused, owners_and_approvers
from rollouts.models import FollowUp, Incident, ReleaseDecision, RolloutPlan

# The decisions that move a plan's status: a later one means the incident's pause is over.
STATUS_DECISIONS = (ReleaseDecision.Action.START, ReleaseDecision.Action.ADVANCE, ReleaseDecision.Action.PAUSE,
                    ReleaseDecision.Action.RESUME, ReleaseDecision.Action.ROLLBACK, ReleaseDecision.Action.PROMOTE,
                    ReleaseDecision.Action.BREACH, ReleaseDecision.Action.STEP_BACK)
PAUSE_PREFIX = "Incident mode: "  # how the pause of a plan by incident mode reads in its log


def incident_scope(environment: Environment, surfaces: list[str]) -> QuerySet[Targeting]:
    """What incident mode stops in `environment`: every flag on there, or those of the chosen
    behavior surfaces (an unknown surface matches none; starting refuses it). The preview
    (rollouts.selectors.incident_scope) reads the same set without locks."""
    targetings = Targeting.objects.filter(environment=environment, enabled=True)
    if surfaces:
        targetings = targetings.filter(flag__behavior_surface__in=surfaces)
    return targetings


def _incident_targetings(environment: Environment, surfaces: list[str], guard: Any) -> list[Targeting]:
    """The targetings incident mode turns off, locked in the guard's order (flags first)."""
    targetings = incident_scope(environment, surfaces)
    flag_ids = list(targetings.values_list("flag_id", flat=True))
    guard.touch_flags(project_id=environment.project_id, flag_ids=flag_ids)
    return list(targetings.filter(flag_id__in=flag_ids).select_for_update(of=("self",))
                .select_related("flag__owner_user", "flag__project", "environment").order_by("flag__key"))


@transaction.atomic
def incident_start(*, environment: Environment, surfaces: list[str], reason: str, actor: AbstractBaseUser) -> Incident:
    """Incident mode: every flag that is on in the environment (or only those of the chosen
    behavior surfaces) goes to its fallback in one transaction."""
    project = environment.project
    START_INCIDENT.require(actor, project)
    reason = require_reason(reason)
    unknown = set(surfaces) - set(BehaviorSurface.values)
    if unknown:
        raise ValidationError({"surfaces": f"Unknown behavior surface(s): {', '.join(sorted(unknown))}."})
    with governed_write() as guard:
        targetings = _incident_targetings(environment, surfaces, guard)
        # One incident start at a time per environment (locked after the flags, in the
        # guard's order: catalog writes lock flags first and bump the environment last).
        Environment.objects.select_for_update().get(pk=environment.pk)
        if Incident.objects.filter(environment=environment, lifted_at__isnull=True).exists():
            raise ValidationError(f"Incident mode is already on in {environment.name}: lift it first.")
        if not targetings:
            raise ValidationError({"surfaces": f"No flag of those surfaces is on in {environment.name}: nothing to "
                                               "send to a fallback."})
        # What each flag served when incident mode stopped it: lifting may restore exactly
        # that, and nothing else, without a new approval.
        serving = served_states(project_id=project.pk, flag_ids=[t.flag_id for t in targetings])
        affected = []
        for targeting in targetings:
            updated = flag_services.targeting_update(targeting=targeting, actor=actor, enabled=False,
                                                     reason=f"{PAUSE_PREFIX}{reason}")
            served = serving.get(pair_key(targeting.flag_id, environment.pk))
            affected.append({"targeting": targeting.pk, "flag": targeting.flag.key, "version": updated.version,
                             "served_hash": served.hash if served else None})
    running = list(RolloutPlan.objects.filter(flag_id__in=[t.flag_id for t in targetings], environment=environment,
                                              status=RolloutPlan.Status.RUNNING).values_list("pk", flat=True))
    observers.flags_stopped(flag_ids=[t.flag_id for t in targetings], environment_id=environment.pk, actor=actor,
                            reason=f"{PAUSE_PREFIX}{reason}")
    # Which rollout plans stopping these flags paused (rollouts.plans.observers): lifting tells
    # their owners, and their pages say so; nothing resumes them but a person.
    paused: dict[int, list[int]] = {}
    for plan_pk, flag_id in RolloutPlan.objects.filter(pk__in=running, status=RolloutPlan.Status.PAUSED).values_list(
            "pk", "flag_id"):
        paused.setdefault(flag_id, []).append(plan_pk)
    for entry, targeting in zip(affected, targetings, strict=True):
        entry["paused_plans"] = sorted(paused.get(targeting.flag_id, []))
    scope = ", ".join(BehaviorSurface(s).label for s in sorted(surfaces)) if surfaces else "every flag"
    incident = Incident.objects.create(project=project, environment=environment, surfaces=sorted(surfaces),
                                       reason=reason, started_by=actor, started_by_label=actor.get_username(),
                                       affected=affected)
    title = f"Incident mode in {environment.name}: {len(affected)} flag(s) sent to their fallbacks ({scope})"
    record(actor=actor, action=AuditAction.INCIDENT_STARTED, target=incident, project=project,
           environment=environment, after={"surfaces": sorted(surfaces), "flags": [a["flag"] for a in affected]},
           reason=reason, summary=title)
    open_follow_up(project=project, environment=environment, kind=FollowUp.Kind.INCIDENT, title=title,
                   reason=reason, actor=actor, incident=incident)
    flags = [t.flag for t in targetings]
    notify(recipients=[u for u in owners_and_approvers(project, flags) if u.pk != actor.pk], kind="incident.started",
           title=title, body=f"{actor.get_username()}: {reason}",
           url=reverse("rollouts:incidents", kwargs={"project_key": project.key}))
    return incident


@transaction.atomic
def incident_lift(*, incident: Incident, reason: str, actor: AbstractBaseUser) -> Incident:
    """Turn back on the flags incident mode turned off, unless someone changed them since:
    their targeting moved past the version incident mode left, or what they would serve once
    on (segments, values, the fallback) differs from what they served when incident mode
    stopped them. Those stay off and are listed. Restoring exactly the served state that was
    serving needs no new approval: the guard is authorised for that hash and nothing else."""
    incident = Incident.objects.select_for_update(of=("self",)).select_related("project", "environment").get(pk=incident.pk)
    project = incident.project
    LIFT_INCIDENT.require(actor, project)
    if incident.lifted_at is not None:
        raise ValidationError("This incident was lifted already.")
    reason = require_reason(reason)
    by_id = {t.pk: t for t in Targeting.objects.select_related("flag", "environment")
             .filter(pk__in=[a["targeting"] for a in incident.affected])}
    restored, left = [], []
    for entry in incident.affected:
        targeting = by_id.get(entry["targeting"])
        if targeting is None or not entry.get("served_hash"):
            left.append(entry["flag"])
            continue
        restoring = Authorization({pair_key(targeting.flag_id, targeting.environment_id): entry["served_hash"]},
                                  f"incident {incident.pk} lifted")
        try:
            # One flag that may no longer go on (changed since, archived) holds back no other.
            with transaction.atomic(), governed_write(authorization=restoring) as scope:
                scope.touch_flags(project_id=project.pk, flag_ids=[targeting.flag_id])
                current = Targeting.objects.select_for_update(of=("self",)).get(pk=targeting.pk)
                if current.version != entry["version"] or current.enabled:
                    raise ValidationError("changed since incident mode")
                flag_services.targeting_update(targeting=current, actor=actor, enabled=True,
                                               expected_version=entry["version"], reason=f"Incident lifted: {reason}")
        except ValidationError:  # GovernanceError included: it would serve something else now
            left.append(entry["flag"])
            continue
        restored.append(entry["flag"])
    incident.lifted_at = timezone.now()
    incident.lifted_by = actor
    incident.lift_reason = reason
    incident.save(update_fields=["lifted_at", "lifted_by", "lift_reason"])
    still_paused = plans_still_paused(incident)
    summary = f"Incident mode lifted in {incident.environment.name}: {len(restored)} flag(s) back on"
    if left:
        summary += f"; left as they are (changed since, or no longer allowed on): {', '.join(left)}"
    if still_paused:
        summary += (f"; rollout plan(s) it paused stay paused until resumed: "
                    f"{', '.join(str(plan.pk) for plan in still_paused)}")
    record(actor=actor, action=AuditAction.INCIDENT_LIFTED, target=incident, project=project,
           environment=incident.environment,
           after={"restored": restored, "left": left, "plans_still_paused": [plan.pk for plan in still_paused]},
           reason=reason, summary=summary)
    for plan in still_paused:
        notify_plan_still_paused(plan, incident, actor)
    incident.restored, incident.left, incident.plans_still_paused = restored, left, still_paused
    return incident


def paused_plan_ids(incident: Incident) -> list[int]:
    """The rollout plans starting incident mode paused (recorded with the flags it stopped)."""
    return sorted({pk for entry in incident.affected for pk in entry.get("paused_plans", [])})


def plans_still_paused(incident: Incident) -> list[RolloutPlan]:
    """The plans incident mode paused that are paused still by it: nobody resumed, rolled back
    or paused them again since. Two queries."""
    plans = list(RolloutPlan.objects.filter(pk__in=paused_plan_ids(incident), status=RolloutPlan.Status.PAUSED)
                 .select_related("flag__owner_user", "project", "created_by").order_by("pk"))
    last: dict[int, ReleaseDecision] = {}
    for decision in ReleaseDecision.objects.filter(plan__in=plans, action__in=STATUS_DECISIONS).order_by("id"):
        last[decision.plan_id] = decision
    return [plan for plan in plans if plan.pk in last and last[plan.pk].action == ReleaseDecision.Action.PAUSE
            and last[plan.pk].reason == f"{PAUSE_PREFIX}{incident.reason}"]
