"""The change request page and its htmx actions (approve, reject, comment, schedule, cancel,
apply), the approver's inbox and the flag's change-control panel, with query counts that do
not grow with requests, approvals or follow-ups (rollouts/views.py)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from flags.models import Flag
from rollouts.change_control import approval_policy, approving, incident_mode, kill_switch
from rollouts.models import ChangeRequest, FollowUp
from tests.flags.support import HTMX
from tests.rollouts.support import FLAG_PAGE as FLAG
from tests.rollouts.support import PROFILE_PAGE as PROFILE
from tests.rollouts.support import as_user, escalate, production, user

pytestmark = pytest.mark.django_db


def test_change_request__self_approval_refused_in_page_and_by_forged_post(client, demo) -> None:
    change_request = escalate()
    url = f"/p/support-assistant/changes/{change_request.pk}/"
    page = as_user(client, "owner").get(url).content.decode()
    assert "approve/" not in page
    forged = client.post(url + "approve/", headers=HTMX)
    assert forged.status_code == 403 and not change_request.approvals.exists()  # the owner is not an approver
    # an approver who requested it themself
    response = as_user(client, "pm").post(url + "approve/")
    assert response.status_code == 302 and change_request.approvals.count() == 1  # pm is not the requester


def test_change_request__two_approvals_then_apply_through_htmx(client, demo) -> None:
    change_request = escalate()
    url = f"/p/support-assistant/changes/{change_request.pk}/"
    first = as_user(client, "pm").post(url + "approve/", {"comment": "ok for beta"}, headers=HTMX)
    assert first.status_code == 200 and "1 of 2" in first.content.decode() and "ok for beta" in first.content.decode()
    again = client.post(url + "approve/", headers=HTMX)
    assert again.status_code == 422 and "already decided" in again.content.decode()
    second = as_user(client, "lead").post(url + "approve/", headers=HTMX)
    assert "2 of 2" in second.content.decode() and ">Approved<" in second.content.decode()
    applied = as_user(client, "owner").post(url + "apply/", headers=HTMX)
    assert applied.status_code == 200 and "Applied" in applied.content.decode()
    assert production().rules[-1]["serve"] == {"variation": "write"}


def test_change_request__reject_comment_schedule_cancel(client, demo) -> None:
    change_request = escalate()
    url = f"/p/support-assistant/changes/{change_request.pk}/"
    response = as_user(client, "pm").post(url + "comment/", {"body": ""}, headers=HTMX)
    assert response.status_code == 422
    response = client.post(url + "comment/", {"body": "Which accounts exactly?"}, headers=HTMX)
    assert "Which accounts exactly?" in response.content.decode()
    assert client.post(url + "schedule/", {"scheduled_for": "2999-01-01T10:00"}, headers=HTMX).status_code == 403
    bad = as_user(client, "owner").post(url + "schedule/", {"scheduled_for": "2000-01-01T10:00"}, headers=HTMX)
    assert bad.status_code == 422 and "future" in bad.content.decode()
    soon = timezone.localtime() + datetime.timedelta(days=2)
    early = client.post(url + "schedule/", {"scheduled_for": soon.strftime("%Y-%m-%dT%H:%M")}, headers=HTMX)
    assert early.status_code == 422 and "Only an approved request can be scheduled" in early.content.decode()
    rejected = as_user(client, "lead").post(url + "reject/", {"comment": "no"}, headers=HTMX)
    assert ">Rejected<" in rejected.content.decode()
    assert ChangeRequest.objects.get().status == "rejected"
    cancel = as_user(client, "owner").post(url + "cancel/", headers=HTMX)
    assert cancel.status_code == 422 and "rejected already" in cancel.content.decode()


def test_change_request__other_project_or_unknown_id__404(client, demo) -> None:
    change_request = escalate()
    assert as_user(client, "pm").get("/p/support-assistant/changes/999999/").status_code == 404
    assert client.get(f"/p/nope/changes/{change_request.pk}/").status_code == 404


def test_inbox__waiting_for_me_and_mine(client, demo) -> None:
    change_request = escalate()
    page = as_user(client, "pm").get("/changes/").content.decode()
    assert f"CR-{change_request.pk}" in page.split('id="follow-ups"')[0]
    mine = as_user(client, "owner").get("/changes/").content.decode()
    assert "Nothing waits for your approval." in mine and f"CR-{change_request.pk}" in mine


def _queries(client: Any, url: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured.captured_queries)


def test_inbox_and_panel__queries_do_not_grow_with_requests(client, demo) -> None:
    as_user(client, "owner")
    escalate()
    as_user(client, "pm")
    few = (_queries(client, "/changes/"), _queries(client, f"{FLAG}change-control/"))
    for _ in range(5):
        escalate()
    assert ChangeRequest.objects.count() == 6
    many = (_queries(client, "/changes/"), _queries(client, f"{FLAG}change-control/"))
    assert many == few


def test_change_request_page_and_panel__queries_do_not_grow_with_approvals_and_follow_ups(client: Any,
                                                                                          demo: Any) -> None:
    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured.captured_queries)

    # Three approvals needed, so both counts are taken on a pending page (a pending page also
    # checks that enough approvers exist)
    approval_policy.approval_policy_update(environment=production().environment, actor=user("admin"),
                                    approvals_for_escalation=3)
    change_request = escalate()
    client.force_login(user("admin"))
    url = f"/p/support-assistant/changes/{change_request.pk}/"
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    one = count(url)
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    assert count(url) == one
    kill_switch.killswitch_flip(targeting=production("support_assistant_profile"), reason="a", actor=user("operator"))
    panel_one = count(f"{PROFILE}change-control/")
    incident_mode.incident_start(environment=production().environment, surfaces=[], reason="b", actor=user("operator"))
    FollowUp.objects.update(flag=Flag.objects.get(key="support_assistant_profile"))
    assert FollowUp.objects.count() == 2
    assert count(f"{PROFILE}change-control/") == panel_one

