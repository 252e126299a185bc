"""Operations through the management API (api/routers/operations.py): the kill switch, incident
mode and the follow-ups they leave, each through the console's rule and service, with the audit
row naming the token."""

from __future__ import annotations

from typing import Any

import pytest

from audit.constants import AuditAction
from audit.models import AuditEvent
from audit.services import actor_label
from flags.services.access_tokens import token_for
from rollouts.change_control import incident_mode, kill_switch
from rollouts.models import FollowUp, Incident
from tests.api.conftest import ApiClient
from tests.flags.support import audit_mark
from tests.rollouts.support import PROFILE, TOOL_MODE, production, user

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
PROJECT = "/projects/support-assistant"
KILL = f"{PROJECT}/flags/{TOOL_MODE}/kill-switch/production"


def via(api: ApiClient) -> str:
    """The actor label of an audit row written through `api`'s token."""
    token = token_for(api.token)
    return f"{actor_label(token.user)} via API token {token.name} ({token.prefix}…)"


def audit_row(mark: int, action: str) -> AuditEvent:
    return AuditEvent.objects.get(id__gt=mark, action=action)


def flipped(flag_key: str = TOOL_MODE) -> FollowUp:
    """An operator flipped the kill switch in the console: its follow-up."""
    kill_switch.killswitch_flip(targeting=production(flag_key), reason="Tool misuse reported", actor=user("operator"))
    return FollowUp.objects.get(flag__key=flag_key)


# --- the kill switch -------------------------------------------------------------------------

def test_kill_switch__operator__fallback_at_once_with_follow_up_and_audit_row(personal_api: Any) -> None:
    api = personal_api("operator", scopes=("read", "operate"))
    before = production().version
    mark = audit_mark()
    response = api.post(KILL, {"reason": "Tool misuse reported"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["enabled"] is False and body["environment"] == "production"
    assert body["version"] == production().version == before + 1 and response["ETag"] == f'"v{before + 1}"'
    row = audit_row(mark, AuditAction.KILLSWITCH_FLIPPED)
    assert row.actor_label == via(api) and row.reason == "Tool misuse reported"
    assert FollowUp.objects.get().kind == FollowUp.Kind.KILLSWITCH


def test_kill_switch__already_off__422(personal_api: Any) -> None:
    flipped()
    response = personal_api("operator").post(KILL, {"reason": "again"})
    assert response.status_code == 422 and "already off" in response.json()["detail"]


def test_kill_switch__no_reason__422_and_still_on(personal_api: Any) -> None:
    api = personal_api("operator")
    for body in ({"reason": "  "}, {}):
        response = api.post(KILL, body)
        assert response.status_code == 422 and response.json()["errors"][0]["path"] == "reason"
    assert production().enabled is True


def test_kill_switch__editor_without_operator_role__403_forbidden(personal_api: Any) -> None:
    response = personal_api("owner").post(KILL, {"reason": "I own it"})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert "operator role" in response.json()["detail"] and production().enabled is True


def test_kill_switch__token_without_operate_scope__403_insufficient_scope(personal_api: Any) -> None:
    response = personal_api("operator", scopes=("read", "write")).post(KILL, {"reason": "Tool misuse"})
    assert response.status_code == 403 and response.json()["code"] == "insufficient_scope"
    assert production().enabled is True


def test_kill_switch__unknown_environment_or_flag__404(personal_api: Any) -> None:
    api = personal_api("operator")
    assert api.post(f"{PROJECT}/flags/{TOOL_MODE}/kill-switch/moon", {"reason": "x"}).status_code == 404
    assert api.post(f"{PROJECT}/flags/nope/kill-switch/production", {"reason": "x"}).status_code == 404


# --- incident mode ---------------------------------------------------------------------------

def test_incident__start_list_lift__through_the_service_with_audit_rows(personal_api: Any) -> None:
    api = personal_api("operator", scopes=("read", "operate"))
    mark = audit_mark()
    # When the operator starts incident mode for the agent tools surface
    started = api.post(f"{PROJECT}/incidents", {"environment": "production", "surfaces": ["agent_tools"],
                                                "reason": "Tool misuse reported"})
    # Then that surface's flag serves its fallback, the others stay on
    assert started.status_code == 201, started.content
    incident = started.json()
    assert (incident["flags"], incident["surfaces"], incident["active"]) == ([TOOL_MODE], ["agent_tools"], True)
    assert production().enabled is False and production(PROFILE).enabled is True
    assert audit_row(mark, AuditAction.INCIDENT_STARTED).actor_label == via(api)
    listed = api.get(f"{PROJECT}/incidents", {"active": "true"}).json()
    assert [item["id"] for item in listed["items"]] == [incident["id"]] and listed["next_cursor"] is None
    # When it is lifted
    lifted = api.post(f"{PROJECT}/incidents/{incident['id']}/lift", {"reason": "Misuse blocked upstream"})
    # Then the flag is back on
    assert lifted.status_code == 200, lifted.content
    assert (lifted.json()["restored"], lifted.json()["left"], lifted.json()["active"]) == ([TOOL_MODE], [], False)
    assert lifted.json()["lift_reason"] == "Misuse blocked upstream"
    assert production().enabled is True
    assert audit_row(mark, AuditAction.INCIDENT_LIFTED).actor_label == via(api)
    assert api.get(f"{PROJECT}/incidents", {"active": "true"}).json()["items"] == []
    again = api.post(f"{PROJECT}/incidents/{incident['id']}/lift", {"reason": "twice"})
    assert again.status_code == 422 and "lifted already" in again.json()["detail"]


def test_incident__already_on__422(personal_api: Any) -> None:
    incident_mode.incident_start(environment=production().environment, surfaces=[], reason="Provider outage",
                                 actor=user("operator"))
    response = personal_api("operator").post(f"{PROJECT}/incidents", {"environment": "production",
                                                                      "reason": "again"})
    assert response.status_code == 422 and "already on" in response.json()["detail"]


@pytest.mark.parametrize(("body", "path"), [
    ({"environment": "moon", "reason": "outage"}, "environment"),
    ({"environment": "production", "surfaces": ["no_such_surface"], "reason": "outage"}, "surfaces.0"),
    ({"environment": "production", "reason": " "}, "reason"),
])
def test_incident__bad_input__422_and_nothing_stopped(personal_api: Any, body: dict[str, Any], path: str) -> None:
    response = personal_api("operator").post(f"{PROJECT}/incidents", body)
    assert response.status_code == 422, response.content
    assert response.json()["errors"][0]["path"] == path
    assert not Incident.objects.exists() and production().enabled is True


def test_incident__approver__403_forbidden(personal_api: Any) -> None:
    response = personal_api("pm").post(f"{PROJECT}/incidents", {"environment": "production", "reason": "outage"})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert not Incident.objects.exists()


def test_incident_lift__unknown_incident__404(personal_api: Any) -> None:
    response = personal_api("operator").post(f"{PROJECT}/incidents/999999/lift", {"reason": "x"})
    assert response.status_code == 404


# --- follow-ups ------------------------------------------------------------------------------

def test_follow_ups__listed_and_filtered(personal_api: Any) -> None:
    tool_mode = flipped()
    profile = flipped(PROFILE)
    follow_ups_api = personal_api("auditor", scopes=("read",))
    listed = follow_ups_api.get(f"{PROJECT}/follow-ups").json()
    assert [item["id"] for item in listed["items"]] == [profile.pk, tool_mode.pk]
    item = listed["items"][1]
    assert (item["kind"], item["flag"], item["environment"], item["opened_by"]) == (
        "killswitch", TOOL_MODE, "production", "operator")
    assert [i["id"] for i in follow_ups_api.get(f"{PROJECT}/follow-ups", {"flag": PROFILE}).json()["items"]] == [
        profile.pk]
    assert follow_ups_api.get(f"{PROJECT}/follow-ups", {"open": "false"}).json()["items"] == []
    page_one = follow_ups_api.get(f"{PROJECT}/follow-ups", {"limit": 1}).json()
    page_two = follow_ups_api.get(f"{PROJECT}/follow-ups", {"limit": 1, "cursor": page_one["next_cursor"]}).json()
    assert [i["id"] for i in page_one["items"] + page_two["items"]] == [profile.pk, tool_mode.pk]


def test_follow_up_acknowledge__second_person__acknowledged_with_audit_row(personal_api: Any) -> None:
    follow_up = flipped()
    api = personal_api("pm", scopes=("approve",))
    mark = audit_mark()
    response = api.post(f"{PROJECT}/follow-ups/{follow_up.pk}/acknowledge",
                        {"note": "Misuse came from one account; blocked. Turn back on after the fix."})
    assert response.status_code == 200, response.content
    assert response.json()["acknowledged_by"] == "pm" and response.json()["note"].startswith("Misuse came")
    row = audit_row(mark, AuditAction.FOLLOW_UP_ACKNOWLEDGED)
    assert row.actor_label == via(api)
    assert api.get(f"{PROJECT}/follow-ups", {"open": "true"}).status_code == 403  # no read scope on this token
    twice = api.post(f"{PROJECT}/follow-ups/{follow_up.pk}/acknowledge", {"note": "again"})
    assert twice.status_code == 422 and "already" in twice.json()["detail"]


def test_follow_up_acknowledge__by_who_opened_it__refused(personal_api: Any) -> None:
    follow_up = flipped()
    response = personal_api("operator").post(f"{PROJECT}/follow-ups/{follow_up.pk}/acknowledge", {"note": "done"})
    assert response.status_code == 422 and "second person" in response.json()["detail"]
    assert FollowUp.objects.get().acknowledged_at is None


def test_follow_up_acknowledge__auditor__403_forbidden(personal_api: Any) -> None:
    follow_up = flipped()
    response = personal_api("auditor", scopes=("read", "write")).post(
        f"{PROJECT}/follow-ups/{follow_up.pk}/acknowledge", {"note": "seen"})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"


def test_follow_up_acknowledge__token_with_only_read_scope__403_insufficient_scope(personal_api: Any) -> None:
    follow_up = flipped()
    response = personal_api("pm", scopes=("read",)).post(f"{PROJECT}/follow-ups/{follow_up.pk}/acknowledge",
                                                         {"note": "seen"})
    assert response.status_code == 403 and response.json()["code"] == "insufficient_scope"

