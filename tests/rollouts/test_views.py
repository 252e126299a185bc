"""The change-control console: proposing in a governed environment, the change request page
and its htmx actions, the kill switch, incident mode, follow-ups and approval policies."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from rollouts.models import ChangeRequest, FollowUp, Incident
from tests.rollouts.support import BETA_WRITE, escalate, production, user

pytestmark = pytest.mark.django_db
FLAG = "/p/support-assistant/flags/support_agent_tool_mode/"
PROFILE = "/p/support-assistant/flags/support_assistant_profile/"
HTMX = {"HX-Request": "true"}


def as_user(client: Any, name: str) -> Any:
    client.force_login(user(name))
    return client


def propose_data(**overrides: Any) -> dict[str, Any]:
    targeting = production()
    data = {"enabled": "on", "assignment_unit": "accountId", "default_variation": "read_only",
            "rules": json.dumps([*targeting.rules, BETA_WRITE]), "version": str(targeting.version),
            "reason": "Beta accounts asked for ticket writes"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_flag_page__governed_card_offers_proposal_to_owner_and_kill_switch_to_operator(client, demo) -> None:
    page = as_user(client, "owner").get(FLAG).content.decode()
    assert f"{FLAG}propose/production/" in page and "Kill switch…" not in page
    page = as_user(client, "operator").get(FLAG).content.decode()
    assert f"{FLAG}killswitch/production/" in page and "Propose a change" not in page and "Roll back…" in page
    page = as_user(client, "auditor").get(FLAG).content.decode()
    assert "propose/production" not in page and "killswitch/" not in page


def test_preview__needs_two_approvals_because_escalation(client, demo) -> None:
    response = as_user(client, "owner").post(f"{FLAG}propose/production/preview/", propose_data(reason=""),
                                             headers=HTMX)
    text = response.content.decode()
    assert response.status_code == 200
    assert "This change needs 2 approvals" in text and "write (risk 4) becomes reachable" in text
    assert "tool mode for beta_accounts (new rule): read_only (risk 1) → write (risk 4)" in text
    broken = as_user(client, "owner").post(f"{FLAG}propose/production/preview/", propose_data(rules="[{"),
                                           headers=HTMX)
    assert "Not valid JSON" in broken.content.decode()
    assert not ChangeRequest.objects.exists()


def test_preview__too_few_other_approvers__says_so_before_submitting(client, demo) -> None:
    # Given lead, one of the project's two approvers, proposes an escalation needing two
    shown = as_user(client, "lead").post(f"{FLAG}propose/production/preview/", propose_data(reason=""),
                                         headers=HTMX).content.decode()
    # Then the preview says it could never be approved as things stand
    assert 'data-testid="preview-shortfall"' in shown and "Only 1 person besides you holds the approver role" in shown
    # while the owner, whom both approvers can approve, sees no such warning
    shown = as_user(client, "owner").post(f"{FLAG}propose/production/preview/", propose_data(reason=""),
                                          headers=HTMX).content.decode()
    assert "This change needs 2 approvals" in shown and "preview-shortfall" not in shown


def test_propose__submits_a_change_request_and_shows_its_page(client, demo) -> None:
    before = production().version
    response = as_user(client, "owner").post(f"{FLAG}propose/production/", propose_data())
    change_request = ChangeRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/p/support-assistant/changes/{change_request.pk}/"
    assert production().version == before
    page = client.get(response["Location"]).content.decode()
    assert "0 of 2" in page and "tool mode for beta_accounts (new rule): read_only (risk 1) → write (risk 4)" in page
    assert "a second person must approve it" in page  # the requester sees no approve button


@pytest.mark.parametrize(("overrides", "field_error"), [
    ({"reason": ""}, "This field is required."),
    ({"rules": "[{\"clauses\": 1}]"}, "rules"),
    ({"version": "1"}, "changed since you opened it"),
    ({"default_variation": "no_such"}, "Select a valid choice"),
])
def test_propose__bad_input__422_beside_the_field_nothing_written(client, demo, overrides, field_error) -> None:
    as_user(client, "owner")
    before = AuditEvent.objects.count()
    response = client.post(f"{FLAG}propose/production/", propose_data(**overrides))
    assert response.status_code == 422 and field_error in response.content.decode()
    assert AuditEvent.objects.count() == before and not ChangeRequest.objects.exists()


def test_propose__safer_change_applies_at_once(client, demo) -> None:
    response = as_user(client, "owner").post(f"{FLAG}propose/production/",
                                             propose_data(rules="[]", reason="internal trial over"))
    assert response.status_code == 302 and response["Location"].endswith("#env-production")
    assert production().rules == [] and not ChangeRequest.objects.exists()


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


def test_killswitch__htmx_reason_required_then_card_shows_off(client, demo) -> None:
    url = f"{PROFILE}killswitch/production/"
    form = as_user(client, "operator").get(url, headers=HTMX)
    assert form.status_code == 200 and "Send everyone to baseline_v3" in form.content.decode()
    missing = client.post(url, {"reason": ""}, headers=HTMX)
    assert missing.status_code == 422 and missing["HX-Retarget"] == "#killswitch-production"
    assert production("support_assistant_profile").enabled is True
    done = client.post(url, {"reason": "citations point at stale docs"}, headers=HTMX)
    text = done.content.decode()
    assert done.status_code == 200 and 'id="env-production"' in text and "Kill switch flipped" in text
    assert production("support_assistant_profile").enabled is False and FollowUp.objects.count() == 1
    assert as_user(client, "owner").post(url, {"reason": "x"}).status_code == 403


def test_follow_up__acknowledged_from_the_flag_page(client, demo) -> None:
    as_user(client, "operator").post(f"{PROFILE}killswitch/production/", {"reason": "stale docs"})
    follow_up = FollowUp.objects.get()
    url = f"/p/support-assistant/follow-ups/{follow_up.pk}/acknowledge/"
    panel = as_user(client, "pm").get(f"{PROFILE}change-control/").content.decode()
    assert "Follow-ups to acknowledge" in panel and "stale docs" in panel
    empty = client.post(url, {"note": ""}, headers=HTMX)
    assert empty.status_code == 422
    done = client.post(url, {"note": "Docs index rebuilt; turn back on via a request"}, headers=HTMX)
    assert done.status_code == 200 and "Acknowledged by pm" in done.content.decode()
    assert as_user(client, "auditor").post(url, {"note": "x"}).status_code == 403


def test_incident_mode__start_and_lift_from_the_page(client, demo) -> None:
    page = as_user(client, "operator").get("/p/support-assistant/incidents/")
    assert "No incidents yet." in page.content.decode()
    bad = client.post("/p/support-assistant/incidents/", {"environment": "production", "reason": ""})
    assert bad.status_code == 422 and not Incident.objects.exists()
    started = client.post("/p/support-assistant/incidents/", {"environment": "production",
                                                               "surfaces": ["agent_tools"], "reason": "tool abuse"})
    assert started.status_code == 302
    incident = Incident.objects.get()
    assert production().enabled is False
    assert "Incident mode is on in Production" in client.get(PROFILE + "change-control/").content.decode()
    lifted = client.post(f"/p/support-assistant/incidents/{incident.pk}/lift/", {"reason": "abuse blocked"},
                         headers=HTMX)
    assert lifted.status_code == 200 and lifted["HX-Redirect"] == "/p/support-assistant/incidents/"
    assert production().enabled is True
    assert as_user(client, "owner").post("/p/support-assistant/incidents/",
                                         {"environment": "production", "reason": "x"}).status_code == 403


def test_approval_policy__admin_edits_others_read(client, demo) -> None:
    url = "/p/support-assistant/approval-policy/"
    page = as_user(client, "pm").get(url).content.decode()
    assert "Risk escalations" in page and "Save Production" not in page
    assert client.post(url, {"environment": "production", "production-approvals_for_escalation": "1"}).status_code == 403
    as_user(client, "admin")
    data = {"environment": "production", "production-approvals_for_escalation": "3",
            "production-approvals_otherwise": "4", "production-expire_after_days": "7"}
    bad = client.post(url, data)
    assert bad.status_code == 422 and "at least as many approvals" in bad.content.decode()
    data["production-approvals_otherwise"] = "1"
    assert client.post(url, data).status_code == 302
    assert escalate().required_approvals == 3


def test_inbox__waiting_for_me_and_mine(client, demo) -> None:
    change_request = escalate()
    page = as_user(client, "pm").get("/changes/").content.decode()
    assert f"CR-{change_request.pk}" in page.split('id="follow-ups"')[0]
    mine = as_user(client, "owner").get("/changes/").content.decode()
    assert "Nothing waits for your approval." in mine and f"CR-{change_request.pk}" in mine


# --- flag-wide edits of a flag served in production ------------------------------------------


def test_flag_page__served_variation_edit_goes_through_the_governed_editor(client, demo) -> None:
    page = as_user(client, "owner").get(PROFILE).content.decode()
    assert f"{PROFILE}variations/citation_first_v4/change/" in page
    assert f"{PROFILE}change-contract/" in page and f"{PROFILE}edit/" not in page


def test_variation_change__new_served_value_becomes_a_request(client, demo) -> None:
    from flags.models import Variation

    v4 = Variation.objects.get(flag__key="support_assistant_profile", key="citation_first_v4")
    value = {**v4.value, "temperature": 0.3}
    url = f"{PROFILE}variations/citation_first_v4/change/"
    form = as_user(client, "owner").get(url, headers=HTMX).content.decode()
    assert "a new value waits for approval" in form and 'name="reason"' in form
    missing = client.post(url, {"value": json.dumps(value), "risk_rank": "1", "name": "v4"}, headers=HTMX)
    assert missing.status_code == 422 and "Say why" in missing.content.decode()
    done = client.post(url, {"value": json.dumps(value), "risk_rank": "1", "name": "v4", "reason": "warmer"},
                       headers=HTMX)
    change_request = ChangeRequest.objects.get()
    assert done["HX-Redirect"] == f"/p/support-assistant/changes/{change_request.pk}/"
    v4.refresh_from_db()
    assert v4.value["temperature"] == 0.2 and v4.name == "v4"
    page = client.get(done["HX-Redirect"]).content.decode()
    assert "Value of citation_first_v4 (served in Production): temperature 0.2 → 0.3" in page
    assert "every environment" in page


def test_flags_editors__refuse_a_forged_governed_value_or_fallback_change(client, demo) -> None:
    from flags.models import Flag, Variation

    as_user(client, "owner")
    v4 = Variation.objects.get(flag__key="support_assistant_profile", key="citation_first_v4")
    forged = client.post(f"{PROFILE}variations/citation_first_v4/edit/",
                         {"value": json.dumps({**v4.value, "temperature": 0.9}), "risk_rank": "1", "name": "x"})
    assert forged.status_code == 403 and "needs approval" in forged.content.decode()
    flag = Flag.objects.get(key="support_assistant_profile")
    data = {"name": flag.name, "behavior_surface": flag.behavior_surface, "lifetime": flag.lifetime,
            "fallback_variation": "citation_first_v4", "version": str(flag.version),
            "json_schema": json.dumps(flag.json_schema)}
    assert client.post(f"{PROFILE}edit/", data).status_code == 403
    v4.refresh_from_db()
    flag.refresh_from_db()
    assert v4.value["temperature"] == 0.2 and flag.fallback_variation.key == "baseline_v3"


def test_contract_change__fallback_held_rest_saved(client, demo) -> None:
    from flags.models import Flag

    flag = Flag.objects.get(key="support_assistant_profile")
    data = {"name": "Support profile", "behavior_surface": flag.behavior_surface, "lifetime": flag.lifetime,
            "fallback_variation": "fallback_human_review", "version": str(flag.version),
            "json_schema": json.dumps(flag.json_schema), "reason": "safer fallback during the trial",
            "review_date": flag.review_date.isoformat(), "owner_team": flag.owner_team}
    response = as_user(client, "owner").post(f"{PROFILE}change-contract/", data)
    change_request = ChangeRequest.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/changes/{change_request.pk}/")
    flag.refresh_from_db()
    assert flag.name == "Support profile" and flag.fallback_variation.key == "baseline_v3"
    assert change_request.proposed == {"fallback_variation": "fallback_human_review"}


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


def test_follow_up__its_opener_sees_no_acknowledge_form(client, demo) -> None:
    as_user(client, "operator").post(f"{PROFILE}killswitch/production/", {"reason": "stale docs"})
    panel = client.get(f"{PROFILE}change-control/").content.decode()
    assert "Opened by you: someone else reviews it." in panel and "Acknowledge</button>" not in panel
    assert "Acknowledge</button>" in as_user(client, "lead").get(f"{PROFILE}change-control/").content.decode()
    assert "Acknowledge</button>" not in as_user(client, "auditor").get(f"{PROFILE}change-control/").content.decode()


def test_operator__rolls_back_from_the_proposal_page(client, demo) -> None:
    page = as_user(client, "operator").get(PROFILE).content.decode()
    assert "Roll back…" in page and f"{PROFILE}propose/production/" in page
    form = client.get(f"{PROFILE}propose/production/").content.decode()
    assert "As an operator you can move traffic towards the fallback" in form
    targeting = production("support_assistant_profile")
    rules = [dict(rule) for rule in targeting.rules]
    rules[1]["serve"] = {"variation": "baseline_v3"}
    data = {"enabled": "on", "assignment_unit": "accountId", "default_variation": "baseline_v3",
            "rules": json.dumps(rules), "version": str(targeting.version), "reason": "stale citations"}
    assert client.post(f"{PROFILE}propose/production/", data).status_code == 302
    assert production("support_assistant_profile").rules[1]["serve"] == {"variation": "baseline_v3"}
    escalation = propose_data(reason="more tools")
    response = client.post(f"{FLAG}propose/production/", escalation)
    assert response.status_code == 422 and "Operators move traffic towards the fallback only" in response.content.decode()
