"""No path around change control through the API: the approval-bypass attacks of the served-state
issue, tried with API tokens, end refused or as change requests; production serves only what was
approved. (The same attacks through the console and services: tests/rollouts/change_control/
test_served_state_governance.py, whose helpers these use.)"""

from __future__ import annotations

import datetime

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone

from flags.constants import Role
from flags.models import Flag
from flags.services import segment_create
from flags.services.access_tokens import service_token_create
from rollouts.change_control import approving, incident_mode, submitting
from rollouts.models import ChangeRequest
from tests.api.conftest import ApiClient
from tests.factories import grant, set_up_targeting
from tests.rollouts.change_control.test_served_state_governance import EVERYONE, production_hashes, served
from tests.rollouts.support import TOOL_MODE, production, user

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]
P = "/projects/support-assistant"
FLAG = f"{P}/flags/{TOOL_MODE}"
WRITE_FOR_ALL_CHANGES = {"default_serve": {"variation": "write"}}
WRITE_FOR_ALL = {**WRITE_FOR_ALL_CHANGES, "reason": "Everyone gets write tools"}


def _request(response: object) -> ChangeRequest:
    assert response.status_code == 202, response.content
    body = response.json()
    change_request = ChangeRequest.objects.get(pk=body["id"])
    assert body["status"] == "pending" and body["required_approvals"] >= 1
    return change_request


def test_risky_production_targeting__202_change_request_and_nothing_served(demo: object, personal_api: object) -> None:
    before = production_hashes()

    change_request = _request(personal_api("owner").patch(FLAG + "/targeting/production", WRITE_FOR_ALL))

    assert change_request.requester.username == "owner" and change_request.environment.key == "production"
    assert production_hashes() == before and served(TOOL_MODE, "acct-anyone") == "read_only"


def test_risky_production_targeting__by_an_operator__refused_nothing_written(demo: object,
                                                                             personal_api: object) -> None:
    before = production_hashes()

    response = personal_api("operator").patch(FLAG + "/targeting/production", WRITE_FOR_ALL)

    assert response.status_code in (403, 422) and response["Content-Type"] == "application/problem+json"
    assert production_hashes() == before and not ChangeRequest.objects.exists()


def test_lowering_risk_in_production__operator__applies_at_once(demo: object, personal_api: object) -> None:
    response = personal_api("operator").patch(FLAG + "/targeting/production",
                                              {"rules": [], "reason": "Incident: internal users back to read-only"})

    assert response.status_code == 200, response.content
    assert served(TOOL_MODE, "acct-internal-001") == "read_only"


def test_removing_an_opt_out_target__owner_gets_a_request_operator_refused(demo: object, personal_api: object) -> None:
    # Given production serves `none` to an account that opted out
    set_up_targeting(production(), targets=[{"variation": "none", "values": ["acct-optout-1"]}])
    before = production_hashes()
    clear = {"targets": [], "reason": "tidy"}

    by_operator = personal_api("operator").patch(FLAG + "/targeting/production", clear)
    by_owner = personal_api("owner").patch(FLAG + "/targeting/production", clear)

    assert by_operator.status_code in (403, 422)
    _request(by_owner)
    assert production_hashes() == before and served(TOOL_MODE, "acct-optout-1") == "none"


def test_served_variation_value__202_and_the_old_value_still_served(demo: object, personal_api: object) -> None:
    change_request = _request(personal_api("owner").patch(FLAG + "/variations/read_only",
                                                         {"value": "write", "reason": "more tools"}))

    assert change_request.kind == ChangeRequest.Kind.FLAG
    assert served(TOOL_MODE, "acct-anyone") == "read_only"


def test_new_fallback_of_a_served_flag__202_rest_of_the_contract_saved(demo: object, personal_api: object) -> None:
    response = personal_api("owner").patch(FLAG, {"fallback_variation": "write", "owner_team": "platform",
                                                  "reason": "bolder fallback"})

    _request(response)
    flag = Flag.objects.select_related("fallback_variation").get(key=TOOL_MODE)
    assert flag.fallback_variation.key == "read_only" and flag.owner_team == "platform"


def test_fallback_value_edited_after_approval__apply_conflicted_nothing_served(demo: object,
                                                                               personal_api: object) -> None:
    # Given an approved request making `none` the fallback
    owner = personal_api("owner")
    change_request = _request(owner.patch(FLAG, {"fallback_variation": "none", "reason": "safer fallback"}))
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    before = production_hashes()
    # and the owner then edits `none`'s value through the API (not served yet: saved at once)
    edited = owner.patch(FLAG + "/variations/none", {"value": "write", "reason": "tidy"})
    assert edited.status_code in (200, 202), edited.content

    # When the owner applies the approved request through the API
    applied = owner.post(f"{P}/change-requests/{change_request.pk}/apply")

    # Then it is not applied as approved: production serves what it served
    assert applied.status_code == 409 and applied.json()["code"] == "conflicted", applied.content
    change_request.refresh_from_db()
    assert change_request.status == ChangeRequest.Status.CONFLICTED
    assert production_hashes() == before


def test_segment_widened_between_approval_and_apply__conflicted(demo: object, personal_api: object) -> None:
    # Given an approved request serving `write` to pilot accounts in production
    segment_create(project=demo, key="pilot_accounts", name="Pilot accounts", included_keys=["acct-pilot-1"],
                   actor=user("owner"))
    owner = personal_api("owner")
    rules = [{"id": "pilot", "clauses": [{"op": "in_segment", "values": ["pilot_accounts"]}],
              "serve": {"variation": "write"}}]
    change_request = _request(owner.patch(FLAG + "/targeting/production", {"rules": rules, "reason": "pilot"}))
    for approver in ("pm", "lead")[:change_request.required_approvals]:
        approving.change_request_approve(change_request=change_request, actor=user(approver))
    # and the segment widened to everyone through the API afterwards
    widened = owner.patch(f"{P}/segments/pilot_accounts", {"rules": EVERYONE, "reason": "tidy"})
    assert widened.status_code == 200, widened.content  # not yet reached by production: saved at once

    applied = owner.post(f"{P}/change-requests/{change_request.pk}/apply")

    assert applied.status_code == 409, applied.content
    change_request.refresh_from_db()
    assert change_request.status == ChangeRequest.Status.CONFLICTED
    assert served(TOOL_MODE, "acct-anyone") == "read_only"


def test_edits_while_incident_mode_is_on__lift_leaves_the_flag_off(demo: object, personal_api: object) -> None:
    # Given incident mode sent production to its fallbacks
    incident = incident_mode.incident_start(environment=production().environment, surfaces=[],
                                            reason="Bad answers", actor=user("operator"))
    # and the owner, through the API, widened internal_users and made approval_required serve "write"
    owner = personal_api("owner")
    assert owner.patch(f"{P}/segments/internal_users", {"rules": EVERYONE, "reason": "tidy"}).status_code == 200
    assert owner.patch(FLAG + "/variations/approval_required", {"value": "write", "reason": "tidy"}).status_code == 200

    incident_mode.incident_lift(incident=incident, reason="Recovered", actor=user("operator"))

    assert not production(TOOL_MODE).enabled
    assert served(TOOL_MODE, "acct-anyone") == "read_only"


def test_approval_by_a_service_token__of_its_creators_request__refused(demo: object, personal_api: object) -> None:
    # Given `lead` (editor and approver, here also admin) opened a request, and made an
    # approve-scoped service token
    lead = user("lead")
    change_request = _request(personal_api("lead").patch(FLAG + "/targeting/production", WRITE_FOR_ALL))
    grant(demo, lead, Role.ADMIN)
    _, raw = service_token_create(project=demo, name="approver bot", scopes=["read", "approve"], actor=lead,
                                  expires_at=timezone.now() + datetime.timedelta(days=1))

    # When the token approves lead's request
    response = ApiClient(Client(), raw).post(f"{P}/change-requests/{change_request.pk}/approve")

    # Then it is refused: the token answers for lead
    assert response.status_code in (403, 422), response.content
    change_request.refresh_from_db()
    assert change_request.status == ChangeRequest.Status.PENDING
    assert not change_request.approvals.exists()


def test_creator_of_a_service_token__approving_its_request__refused(demo: object) -> None:
    # Given a request opened by admin's write-scoped service token
    token, _ = service_token_create(project=demo, name="deploy bot", scopes=["write"], actor=user("admin"),
                                    expires_at=timezone.now() + datetime.timedelta(days=1))
    grant(demo, user("admin"), Role.APPROVER)
    change_request = submitting.targeting_change_submit(targeting=production(), changes=WRITE_FOR_ALL_CHANGES,
                                                        reason="more tools", actor=token.user)

    with pytest.raises(ValidationError):
        approving.change_request_approve(change_request=change_request, actor=user("admin"))
    assert approving.valid_approvals(change_request) == 0


def test_two_service_tokens_of_one_person__count_as_one_approval(demo: object) -> None:
    # Given a risk escalation by the owner, needing two approvals, and `admin` holding two
    # approve-scoped service tokens
    change_request = submitting.targeting_change_submit(targeting=production(), changes=WRITE_FOR_ALL_CHANGES,
                                                        reason="more tools", actor=user("owner"))
    assert change_request.required_approvals == 2
    bots = [service_token_create(project=demo, name=f"bot {n}", scopes=["approve"], actor=user("admin"),
                                 expires_at=timezone.now() + datetime.timedelta(days=1))[0] for n in (1, 2)]

    # When both tokens approve
    approving.change_request_approve(change_request=change_request, actor=bots[0].user)
    approving.change_request_approve(change_request=change_request, actor=bots[1].user)

    # Then that is one person's approval: the request still waits for a second person
    change_request.refresh_from_db()
    assert approving.valid_approvals(change_request) == 1
    assert change_request.status == ChangeRequest.Status.PENDING
