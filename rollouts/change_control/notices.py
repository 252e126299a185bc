"""Who hears of what in change control: approvers of new and edited requests, the
requester of decisions, the flag's owner and the approvers of moves to the fallback.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.urls import reverse

from audit.services import Actor
from flags.models import Flag, Project
from flags.permissions import approvers_other_than, holders_of
from notifications.services import notify, settle
from rollouts.actors import actor_label
from rollouts.change_control.wording import change_request_url, label
from rollouts.models import ChangeRequest, Incident, RolloutPlan


def notify_approvers(change_request: ChangeRequest, title: str, body: str) -> None:
    approvers = list(approvers_other_than(change_request.project, change_request.requester_id))
    notify(recipients=approvers, kind="change_request.waiting", title=title, body=body, url=change_request_url(change_request))


# What asks people to approve a request: its "Approval needed" notifications and the reminder
# sweep's "waits for approval". Once the request is decided or closed they say what happened.
WAITING_KINDS = ("change_request.waiting", "reminder.change_request_waiting")
SETTLED_KIND = "change_request.settled"


def settle_approval_notices(change_request: ChangeRequest, outcome: str, actor: Actor | None = None) -> None:
    """The request no longer waits for anyone's approval (approved, rejected, cancelled,
    applied, expired): each notification that asked for it now says what happened
    ("Cancelled by pm: CR-12 … no approval needed") and no longer counts as unread."""
    who = f" by {actor_label(actor)}" if actor is not None else ""
    settle(url=change_request_url(change_request), kinds=WAITING_KINDS, settled_kind=SETTLED_KIND,
           title=f"{outcome}{who}: {label(change_request)}, no approval needed",
           note=f"{outcome}{who}: this request no longer waits for anyone's approval. What it asked:")


def notify_requester(change_request: ChangeRequest, title: str, body: str = "") -> None:
    notify(recipients=[change_request.requester], kind="change_request.decided", title=title,
           body=body or change_request.reason, url=change_request_url(change_request))


def owners_and_approvers(project: Project, flags: list[Flag]) -> list[AbstractBaseUser]:
    owners = [flag.owner_user for flag in flags if flag.owner_user_id]
    return [*owners, *holders_of(project, "approve_change")]


def notify_plan_still_paused(plan: RolloutPlan, incident: Incident, actor: AbstractBaseUser) -> None:
    """Lifting incident mode never resumes a rollout plan it paused: its owner (the flag's
    owner and whoever planned it) hears that it waits for them."""
    recipients = [u for u in (plan.flag.owner_user, plan.created_by) if u is not None and u.pk != actor.pk]
    notify(recipients=recipients, kind="incident.plan_paused",
           title=f"Incident lifted: plan {plan.pk} for flag {plan.flag.key} is still paused; resume when ready",
           body=(f"Incident mode in {incident.environment.name} was lifted by {actor.get_username()}: "
                 f"{incident.lift_reason}. The plan stays at stage {plan.stage_index + 1} until someone resumes it."),
           url=reverse("rollouts:plan_detail", kwargs={"project_key": plan.project.key, "pk": plan.pk}))
