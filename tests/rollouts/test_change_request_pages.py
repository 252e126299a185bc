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

from audit.constants import AuditAction
from flags.models import Flag
from notifications.models import Notification
from rollouts.change_control import applying, approval_policy, approving, incident_mode, kill_switch
from rollouts.models import ChangeRequest, FollowUp
from tests.flags.support import HTMX, audit_mark
from tests.rollouts.support import FLAG_PAGE as FLAG
from tests.rollouts.support import PROFILE_PAGE as PROFILE
from tests.rollouts.support import as_user, escalate, events_since, inbox, production, user

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



def test_reject__without_a_reason__refused_beside_the_comment_and_nothing_written(client, demo) -> None:
    change_request = escalate()
    url = f"/p/support-assistant/changes/{change_request.pk}/"
    mark = audit_mark()
    notifications = Notification.objects.count()
    for blank in ({}, {"comment": "   "}):
        refused = as_user(client, "lead").post(url + "reject/", blank, headers=HTMX)
        body = refused.content.decode()
        assert refused.status_code == 422
        field = body.split('id="id_decision_comment"')[1].split("</div>")[0]
        assert "Say why you reject it" in field  # beside the comment field
    plain = client.post(url + "reject/", {})  # without htmx: the page, with the same error
    assert plain.status_code == 422 and "Say why you reject it" in plain.content.decode()
    assert ChangeRequest.objects.get().status == "pending" and not change_request.approvals.exists()
    assert events_since(mark) == [] and Notification.objects.count() == notifications


def test_reject__with_a_reason__recorded_in_the_audit_trail_and_shown(client, demo) -> None:
    change_request = escalate()
    url = f"/p/support-assistant/changes/{change_request.pk}/"
    mark = audit_mark()
    response = as_user(client, "lead").post(url + "reject/", {"comment": "Not before the ticket audit log."},
                                             headers=HTMX)
    assert response.status_code == 200
    [event] = events_since(mark)
    assert event.action == AuditAction.CHANGE_REQUEST_REJECTED and event.reason == "Not before the ticket audit log."
    assert 'data-testid="cr-rejection">Rejected by lead: Not before the ticket audit log.' in response.content.decode()


def test_discussion__decisions_and_comments_in_time_order_with_who_and_when(client, demo) -> None:
    approval_policy.approval_policy_update(environment=production().environment, actor=user("admin"),
                                           approvals_for_escalation=3)
    change_request = escalate()
    approving.change_request_comment(change_request=change_request, actor=user("lead"), body="first: which accounts?")
    approving.change_request_approve(change_request=change_request, actor=user("pm"), comment="second: fine")
    approving.change_request_comment(change_request=change_request, actor=user("owner"), body="third: the beta list")
    page = as_user(client, "admin").get(f"/p/support-assistant/changes/{change_request.pk}/").content.decode()
    timeline = page.split('data-testid="cr-timeline"')[1].split("</ol>")[0]
    entries = timeline.split('data-testid="cr-discussion-entry"')[1:]
    assert [e.split("<strong>")[1].split("</strong>")[0] for e in entries] == ["lead", "pm", "owner"]
    assert ["first" in entries[0], "second" in entries[1], "third" in entries[2]] == [True, True, True]
    assert all("<time" in e for e in entries)


def test_change_request_page__queries_do_not_grow_with_comments(client, demo) -> None:
    change_request = escalate()
    url = f"/p/support-assistant/changes/{change_request.pk}/"
    approving.change_request_comment(change_request=change_request, actor=user("pm"), body="one")
    as_user(client, "lead")
    with CaptureQueriesContext(connection) as first:
        assert client.get(url).status_code == 200
    for n in range(5):
        approving.change_request_comment(change_request=change_request, actor=user("pm"), body=f"more {n}")
    with CaptureQueriesContext(connection) as later:
        assert client.get(url).status_code == 200
    assert len(later.captured_queries) == len(first.captured_queries)


def test_cancelled_request__no_longer_asks_for_approval_in_the_inbox_or_notifications(client, demo) -> None:
    change_request = escalate()
    url = f"/p/support-assistant/changes/{change_request.pk}/"
    asking = f"Approval needed: CR-{change_request.pk} support_agent_tool_mode in Production"
    assert inbox("pm") == [asking]
    assert as_user(client, "owner").post(url + "cancel/", headers=HTMX).status_code == 200
    settled = f"Cancelled by owner: CR-{change_request.pk} support_agent_tool_mode in Production, no approval needed"
    assert inbox("pm") == [settled] and inbox("lead") == [settled]
    note = Notification.objects.get(recipient=user("pm"))
    assert note.read_at is not None and note.body.startswith("Cancelled by owner: this request no longer waits for")
    assert "Let beta accounts write tickets" in note.body  # what it asked stays below
    changes = as_user(client, "pm").get("/changes/").content.decode()
    assert f"CR-{change_request.pk}" not in changes.split('id="waiting"')[1].split('id="follow-ups"')[0]
    notifications_page = client.get("/notifications/").content.decode()
    assert "Approval needed" not in notifications_page and settled in notifications_page


@pytest.mark.parametrize("close", ["reject", "apply"])
def test_decided_request__approval_notices_say_what_happened(demo, close: str) -> None:
    change_request = escalate()
    if close == "reject":
        approving.change_request_reject(change_request=change_request, actor=user("lead"), comment="no")
        expected = f"Rejected by lead: CR-{change_request.pk} support_agent_tool_mode in Production"
    else:
        approving.change_request_approve(change_request=change_request, actor=user("pm"))
        approving.change_request_approve(change_request=change_request, actor=user("lead"))
        applying.change_request_apply(change_request=change_request, actor=user("owner"))
        expected = f"Approved (2 of 2): CR-{change_request.pk} support_agent_tool_mode in Production"
    for approver in ("pm", "lead"):
        assert inbox(approver) == [f"{expected}, no approval needed"]
    assert not Notification.objects.filter(kind="change_request.waiting").exists()
