"""Change requests through the management API (api/routers/change_requests.py): the list and its
inbox filter, one request with its words, discussion and ETag, and every decision, each through
the console's rule and service; four eyes hold across a person's tokens; a stale If-Match is 412."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import pytest
from django.db import connection, reset_queries
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.constants import AuditAction
from audit.models import AuditEvent
from audit.services import actor_label
from flags.constants import Role
from flags.models import Targeting
from flags.services.access_tokens import token_for
from rollouts.change_control import applying, approval_policy, approving, submitting, wording
from rollouts.models import Approval, ChangeRequest
from tests.api.conftest import ApiClient
from tests.factories import grant, make_project
from tests.flags.support import audit_mark
from tests.rollouts.support import BETA_WRITE, PROFILE, TOOL_MODE, escalate, production, user

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
BETA_APPROVAL = {**BETA_WRITE, "serve": {"variation": "approval_required"}}
BASE = "/projects/support-assistant/change-requests"


def via(api: ApiClient) -> str:
    """The actor label of an audit row written through `api`'s token."""
    token = token_for(api.token)
    return f"{actor_label(token.user)} via API token {token.name} ({token.prefix}…)"


def audit_row(mark: int, action: str) -> AuditEvent:
    return AuditEvent.objects.get(id__gt=mark, action=action)


def widening(requester: str = "owner") -> ChangeRequest:
    """Beta accounts get approval-required writes in production: risky, one approval."""
    targeting = production()
    return submitting.targeting_change_submit(targeting=targeting, changes={"rules": [*targeting.rules, BETA_APPROVAL]},
                                              reason="Beta accounts asked for approval-required writes",
                                              actor=user(requester))


def approved(requester: str = "owner") -> ChangeRequest:
    change_request = widening(requester)
    return approving.change_request_approve(change_request=change_request, actor=user("pm"))


# --- the whole flow --------------------------------------------------------------------------

def test_flow__owner_proposes_pm_approves_owner_applies__production_serves_it(personal_api: Any) -> None:
    owner, pm = personal_api("owner"), personal_api("pm")
    path = f"/projects/support-assistant/flags/{TOOL_MODE}/targeting/production"
    rules = [*production().rules, BETA_APPROVAL]
    # Given the owner proposes a risky production change through the API
    proposed = owner.patch(path, {"rules": rules, "reason": "Beta accounts asked for approval-required writes"})
    assert proposed.status_code == 202, proposed.content
    cr_id = proposed.json()["id"]
    assert proposed.json()["status"] == "pending" and proposed.json()["required_approvals"] == 1
    # When pm approves it and the owner applies it
    mark = audit_mark()
    approval = pm.post(f"{BASE}/{cr_id}/approve", {"comment": "Fine for beta"})
    assert approval.status_code == 200, approval.content
    assert (approval.json()["status"], approval.json()["approvals"]) == ("approved", 1)
    applied = owner.post(f"{BASE}/{cr_id}/apply")
    # Then production serves it, and the audit rows name each token
    assert applied.status_code == 200, applied.content
    assert applied.json()["status"] == "applied"
    assert owner.get(path).json()["rules"] == rules
    assert audit_row(mark, AuditAction.CHANGE_REQUEST_APPROVED).actor_label == via(pm)
    assert audit_row(mark, AuditAction.CHANGE_REQUEST_APPLIED).actor_label == via(owner)


# --- reading ---------------------------------------------------------------------------------

def test_list__filters_and_cursor__newest_first(personal_api: Any) -> None:
    first = widening()
    profile = Targeting.objects.get(flag__key=PROFILE, environment__key="production")
    second = submitting.targeting_change_submit(
        targeting=profile, changes={"default_serve": {"variation": "citation_first_v4"}}, reason="Everyone gets v4",
        actor=user("owner"))
    applying.change_request_cancel(change_request=second, actor=user("owner"))
    api = personal_api("auditor", scopes=("read",))
    # newest first, one per page
    page_one = api.get(BASE, {"limit": 1}).json()
    assert [item["id"] for item in page_one["items"]] == [second.pk]
    page_two = api.get(BASE, {"limit": 1, "cursor": page_one["next_cursor"]}).json()
    assert [item["id"] for item in page_two["items"]] == [first.pk] and page_two["next_cursor"] is None
    # filters as the console's
    assert [i["id"] for i in api.get(BASE, {"status": "pending"}).json()["items"]] == [first.pk]
    assert [i["id"] for i in api.get(BASE, {"flag": PROFILE}).json()["items"]] == [second.pk]
    assert [i["id"] for i in api.get(BASE, {"environment": "staging"}).json()["items"]] == []
    assert api.get(BASE, {"status": "nonsense"}).status_code == 422
    assert api.get(BASE, {"cursor": "not-a-cursor"}).status_code == 400


def test_list__approvals__counted_once_per_person_answering(demo: Any, personal_api: Any, service_api: Any) -> None:
    # Given escalations need three approvals, and one is approved by pm and by two service tokens admin made
    approval_policy.approval_policy_update(environment=production().environment, actor=user("admin"),
                                           approvals_for_escalation=3)
    escalation = escalate()
    approving.change_request_approve(change_request=escalation, actor=user("pm"))
    for _ in range(2):
        assert service_api(("approve",)).post(f"{BASE}/{escalation.pk}/approve").status_code == 200
    other = widening()
    # When the list is read
    items = {item["id"]: item for item in personal_api("owner").get(BASE).json()["items"]}
    # Then admin's tokens count once, as the service counts them
    assert items[escalation.pk]["approvals"] == approving.valid_approvals(escalation) == 2
    assert Approval.objects.filter(change_request=escalation).count() == 3
    assert items[other.pk]["approvals"] == approving.valid_approvals(other) == 0


def test_list__waiting_for_me__the_approvers_inbox(personal_api: Any) -> None:
    # Given one request pm approved already, one waiting for pm, and one lead opened
    decided = approved()
    waiting = escalate()
    profile = Targeting.objects.get(flag__key=PROFILE, environment__key="production")
    leads = submitting.targeting_change_submit(
        targeting=profile, changes={"default_serve": {"variation": "citation_first_v4"}}, reason="v4 for all",
        actor=user("lead"))
    # Then pm waits on the two undecided, lead on the one they did not open, owner (no approver) on none
    def inbox(name: str) -> list[int]:
        return [i["id"] for i in personal_api(name).get(BASE, {"waiting_for_me": "true"}).json()["items"]]
    assert inbox("pm") == [leads.pk, waiting.pk]
    assert inbox("lead") == [waiting.pk]
    assert inbox("owner") == []
    assert decided.status == "approved"


def test_get__words_discussion_and_etag(personal_api: Any) -> None:
    change_request = escalate()
    approving.change_request_comment(change_request=change_request, body="Which beta accounts?", actor=user("lead"))
    approving.change_request_approve(change_request=change_request, actor=user("pm"), comment="Looks right")
    response = personal_api("auditor", scopes=("read",)).get(f"{BASE}/{change_request.pk}")
    assert response.status_code == 200, response.content
    body = response.json()
    assert response["ETag"] == f'"cr-{change_request.diff_hash[:16]}"'
    assert body["version"] == change_request.diff_hash
    assert [line["text"] for line in body["lines"]] == [line.text for line in wording.describe_request(change_request)]
    assert any(line["escalates"] for line in body["lines"])
    assert [(e["kind"], e["author"], e["body"], e["current_version"]) for e in body["discussion"]] == [
        ("comment", "lead", "Which beta accounts?", None), ("approve", "pm", "Looks right", True)]
    assert body["proposed"] == change_request.proposed and body["conflict"] is None


def test_get__unknown_request__404(personal_api: Any) -> None:
    response = personal_api("owner").get(f"{BASE}/999999")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_token_of_another_project__404_for_this_projects_requests(demo: Any, service_api: Any) -> None:
    change_request = widening()
    other = make_project("other")
    grant(other, user("admin"), Role.ADMIN)
    api = service_api(("read", "write", "approve"), project=other)
    assert api.get(f"{BASE}/{change_request.pk}").status_code == 404
    assert api.get(BASE).status_code == 404
    refused = api.post(f"{BASE}/{change_request.pk}/approve")
    assert refused.status_code == 404 and not Approval.objects.exists()


# --- deciding --------------------------------------------------------------------------------

def test_comment__approver_token__comment_and_audit_row(personal_api: Any) -> None:
    change_request = widening()
    api = personal_api("pm", scopes=("approve",))
    mark = audit_mark()
    response = api.post(f"{BASE}/{change_request.pk}/comments", {"body": "Which accounts exactly?"})
    assert response.status_code == 200, response.content
    assert change_request.comments.get().body == "Which accounts exactly?"
    row = audit_row(mark, AuditAction.CHANGE_REQUEST_COMMENTED)
    assert row.actor_label == via(api) and row.change_request_id == change_request.pk
    assert api.post(f"{BASE}/{change_request.pk}/comments", {"body": "  "}).status_code == 422


def test_comment__auditor__403_forbidden(personal_api: Any) -> None:
    change_request = widening()
    response = personal_api("auditor", scopes=("read", "write")).post(f"{BASE}/{change_request.pk}/comments",
                                                                     {"body": "hm"})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"


def test_approve__current_if_match__approved(personal_api: Any) -> None:
    change_request = widening()
    api = personal_api("pm")
    etag = api.get(f"{BASE}/{change_request.pk}")["ETag"]
    response = api.post(f"{BASE}/{change_request.pk}/approve", headers={"If-Match": etag})
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "approved" and response["ETag"] == etag


def test_approve__stale_if_match__412_and_nothing_approved(personal_api: Any) -> None:
    # Given pm read the request, then the owner edited it
    change_request = widening()
    api = personal_api("pm")
    read_etag = api.get(f"{BASE}/{change_request.pk}")["ETag"]
    applying.change_request_edit(change_request=change_request, actor=user("owner"), reason="internal ones only",
                                 changes={"rules": [*production().rules, {**BETA_APPROVAL, "id": "beta-internal"}]})
    mark = audit_mark()
    # When pm approves what they read
    response = api.post(f"{BASE}/{change_request.pk}/approve", headers={"If-Match": read_etag})
    # Then it is refused, and nothing was approved
    assert response.status_code == 412 and response.json()["code"] == "stale_version"
    assert not Approval.objects.exists() and not AuditEvent.objects.filter(id__gt=mark).exists()
    assert api.post(f"{BASE}/{change_request.pk}/approve", headers={"If-Match": '"v3"'}).status_code == 412


def test_approve__token_without_approve_scope__403_insufficient_scope(personal_api: Any) -> None:
    change_request = widening()
    response = personal_api("pm", scopes=("read", "write")).post(f"{BASE}/{change_request.pk}/approve")
    assert response.status_code == 403 and response.json()["code"] == "insufficient_scope"
    assert not Approval.objects.exists()


def test_approve__person_without_approver_role__403_forbidden(personal_api: Any) -> None:
    change_request = widening()
    response = personal_api("operator").post(f"{BASE}/{change_request.pk}/approve")
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert "approver role" in response.json()["detail"] and not Approval.objects.exists()


def test_approve__own_request__refused(personal_api: Any) -> None:
    change_request = widening("lead")  # lead edits and approves
    response = personal_api("lead").post(f"{BASE}/{change_request.pk}/approve")
    assert response.status_code == 422 and "your own request" in response.json()["detail"]
    assert not Approval.objects.exists()


def test_approve__admins_service_token_on_a_request_of_admins_other_service_token__refused(service_api: Any) -> None:
    # Given a service token admin made opens a request through the API
    writer = service_api(("read", "write"))
    path = f"/projects/support-assistant/flags/{TOOL_MODE}/targeting/production"
    opened = writer.patch(path, {"rules": [*production().rules, BETA_APPROVAL], "reason": "CI: beta gets approvals"})
    assert opened.status_code == 202, opened.content
    # When another of admin's service tokens approves it
    response = service_api(("approve",)).post(f"{BASE}/{opened.json()['id']}/approve")
    # Then it is refused: both answer to admin
    assert response.status_code == 422 and "the person this token answers for" in response.json()["detail"]
    assert not Approval.objects.exists()


def test_approve__admins_service_token_on_admins_own_request__refused(service_api: Any) -> None:
    change_request = widening("admin")
    response = service_api(("approve",)).post(f"{BASE}/{change_request.pk}/approve")
    assert response.status_code == 422 and "the person this token answers for" in response.json()["detail"]
    assert not Approval.objects.exists()


def test_reject__approver__closed_with_audit_row(personal_api: Any) -> None:
    change_request = widening()
    api = personal_api("pm", scopes=("approve",))
    mark = audit_mark()
    response = api.post(f"{BASE}/{change_request.pk}/reject", {"comment": "Not before the review"})
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "rejected"
    row = audit_row(mark, AuditAction.CHANGE_REQUEST_REJECTED)
    assert row.actor_label == via(api) and row.reason == "Not before the review"
    assert api.post(f"{BASE}/{change_request.pk}/reject").status_code == 422  # closed already


def test_apply__not_approved__422_and_nothing_applied(personal_api: Any) -> None:
    change_request = widening()
    before = production().version
    response = personal_api("owner").post(f"{BASE}/{change_request.pk}/apply")
    assert response.status_code == 422 and "Only an approved request" in response.json()["detail"]
    assert production().version == before


def test_apply__base_moved__409_conflicted_and_the_request_stays_conflicted(personal_api: Any) -> None:
    # Given an approved request, and a de-escalation applied at once in between
    change_request = approved()
    submitting.targeting_change_submit(targeting=production(), changes={"rules": []}, reason="incident",
                                       actor=user("owner"))
    api = personal_api("owner")
    mark = audit_mark()
    # When the owner applies it
    response = api.post(f"{BASE}/{change_request.pk}/apply")
    # Then a clear problem, the request conflicted (not rolled back), production untouched
    assert response.status_code == 409, response.content
    assert response["Content-Type"] == "application/problem+json" and response.json()["code"] == "conflicted"
    assert "moved from version" in response.json()["detail"]
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "conflicted"
    assert audit_row(mark, AuditAction.CHANGE_REQUEST_CONFLICTED).actor_label == via(api)
    assert production().rules == []
    conflict = api.get(f"{BASE}/{change_request.pk}").json()["conflict"]
    assert conflict["summary"].startswith("Not applied") and conflict["lines"]
    assert api.post(f"{BASE}/{change_request.pk}/apply").status_code == 422


def test_apply__token_without_write_scope__403_insufficient_scope(personal_api: Any) -> None:
    change_request = approved()
    response = personal_api("owner", scopes=("read", "approve")).post(f"{BASE}/{change_request.pk}/apply")
    assert response.status_code == 403 and response.json()["code"] == "insufficient_scope"
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "approved"


def test_schedule__approved__scheduled_with_audit_row(personal_api: Any) -> None:
    change_request = approved()
    api = personal_api("owner")
    when = (timezone.now() + datetime.timedelta(hours=3)).replace(microsecond=0)
    mark = audit_mark()
    response = api.post(f"{BASE}/{change_request.pk}/schedule", {"when": when.isoformat()})
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "scheduled"
    assert datetime.datetime.fromisoformat(response.json()["scheduled_for"]) == when
    assert audit_row(mark, AuditAction.CHANGE_REQUEST_SCHEDULED).actor_label == via(api)


@pytest.mark.parametrize("when", [
    "2030-01-01T10:00:00",  # no time zone
    "2001-01-01T10:00:00+00:00",  # past
    "2999-01-01T10:00:00+00:00",  # beyond a year
    "soon",
])
def test_schedule__bad_time__422_and_still_approved(personal_api: Any, when: str) -> None:
    change_request = approved()
    response = personal_api("owner").post(f"{BASE}/{change_request.pk}/schedule", {"when": when})
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["path"] == "when"
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "approved"


def test_cancel__requester__cancelled_with_audit_row(personal_api: Any) -> None:
    change_request = widening()
    api = personal_api("owner", scopes=("write",))
    mark = audit_mark()
    response = api.post(f"{BASE}/{change_request.pk}/cancel", {"reason": "Wrong audience"})
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    row = audit_row(mark, AuditAction.CHANGE_REQUEST_CANCELLED)
    assert row.actor_label == via(api) and row.reason == "Wrong audience"


def test_cancel__someone_else__403_forbidden(personal_api: Any) -> None:
    change_request = widening()
    response = personal_api("lead").post(f"{BASE}/{change_request.pk}/cancel", {"reason": "mine now"})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "pending"


def test_list__queries__as_many_for_three_requests_as_for_one(personal_api: Any) -> None:
    api = personal_api("pm")
    approved()
    api.get(BASE)  # the first request of a minute writes the token's cache entries
    reset_queries()
    with CaptureQueriesContext(connection) as one:
        assert len(api.get(BASE).json()["items"]) == 1
    escalate()
    approving.change_request_approve(change_request=widening("lead"), actor=user("pm"))
    reset_queries()
    with CaptureQueriesContext(connection) as three:
        assert len(api.get(BASE).json()["items"]) == 3
    assert own_queries(three) == own_queries(one)


def own_queries(captured: CaptureQueriesContext) -> list[str]:
    """The queries a request made, less the shared cache's (rate limit, last use) and savepoints."""
    return [q["sql"].split(" WHERE ")[0] for q in captured.captured_queries
            if "featureops_cache" not in q["sql"] and "SAVEPOINT" not in q["sql"]]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("get", f"{BASE}/0", None),
    ("get", f"{BASE}/99999999999999999999999", None),
    ("post", f"{BASE}/1/comments", {"body": "nul \x00 inside"}),
    ("post", f"{BASE}/1/cancel", {"reason": "nul \x00 inside"}),
])
def test_input_no_database_can_take__422_not_a_server_error(personal_api: Any, method: str, path: str,
                                                            body: Any) -> None:
    api = personal_api("owner")
    response = api.get(path) if method == "get" else api.post(path, body)
    assert response.status_code == 422 and response["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("forged", [b'["x"]', b"[0]", b"[99999999999999999999999]", b"[true]"])
def test_list__cursor_naming_no_id__400_invalid_cursor(personal_api: Any, forged: bytes) -> None:
    cursor = base64.urlsafe_b64encode(forged).decode().rstrip("=")
    response = personal_api("owner").get(BASE, {"cursor": cursor})
    assert response.status_code == 400 and response.json()["code"] == "invalid_cursor"


def test_list__filter_with_a_nul__422(personal_api: Any) -> None:
    response = personal_api("owner").get(BASE, {"flag": "tool\x00mode"})
    assert response.status_code == 422 and response.json()["errors"][0]["path"] == "flag"
