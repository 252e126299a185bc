"""Who hears of what in change control: approvers of new and edited requests, the
requester of decisions, the flag's owner and the approvers of moves to the fallback.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser

from flags.models import Flag, Project
from flags.permissions import approvers_other_than, holders_of
from notifications.services import notify
from rollouts.change_control.wording import change_request_url
from rollouts.models import ChangeRequest


def notify_approvers(change_request: ChangeRequest, title: str, body: str) -> None:
    approvers = list(approvers_other_than(change_request.project, change_request.requester_id))
    notify(recipients=approvers, kind="change_request.waiting", title=title, body=body, url=change_request_url(change_request))


def notify_requester(change_request: ChangeRequest, title: str, body: str = "") -> None:
    notify(recipients=[change_request.requester], kind="change_request.decided", title=title,
           body=body or change_request.reason, url=change_request_url(change_request))


def owners_and_approvers(project: Project, flags: list[Flag]) -> list[AbstractBaseUser]:
    owners = [flag.owner_user for flag in flags if flag.owner_user_id]
    return [*owners, *holders_of(project, "approve_change")]
