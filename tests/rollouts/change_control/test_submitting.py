"""Submitting a change (rollouts/change_control/submitting.py): the policy decides whether it
applies now or opens a change request, and how many approvals that needs; a preview says so
and writes nothing; stale versions are refused; operators only move traffic towards the
fallback (a roll-back leaves a follow-up), and a rollout stage may force a request anywhere."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from flags.models import Targeting
from rollouts.change_control import submitting
from rollouts.models import ChangeRequest, FollowUp
from tests.rollouts.support import BETA_WRITE, PROFILE, TOOL_MODE, escalate, inbox, production, user

pytestmark = pytest.mark.django_db


def test_submit__tool_mode_escalation_in_production__change_request_needing_two(demo) -> None:
    before = production().version
    change_request = escalate()
    assert isinstance(change_request, ChangeRequest)
    assert change_request.status == "pending" and change_request.required_approvals == 2 and change_request.escalation
    assert any("write (risk 4) becomes reachable" in r["text"] for r in change_request.reasons)
    assert production().version == before  # nothing applied
    assert AuditEvent.objects.get(action="change_request.created").change_request_id == change_request.pk


def test_submit__widening_without_escalation__needs_one(demo) -> None:
    targeting = production()
    rules = [*targeting.rules, {**BETA_WRITE, "serve": {"variation": "approval_required"}}]
    change_request = submitting.targeting_change_submit(targeting=targeting, changes={"rules": rules}, reason="beta",
                                                      actor=user("owner"))
    assert change_request.required_approvals == 1 and not change_request.escalation


def test_submit__de_escalation_in_production__applies_at_once_but_needs_a_reason(demo) -> None:
    targeting = production()
    with pytest.raises(ValidationError, match="Say why"):
        submitting.targeting_change_submit(targeting=targeting, changes={"rules": []}, reason="", actor=user("owner"))
    result = submitting.targeting_change_submit(targeting=targeting, changes={"rules": []}, reason="internal done",
                                              actor=user("owner"))
    assert isinstance(result, Targeting) and result.rules == []


def test_submit__development__applies_at_once(demo) -> None:
    targeting = Targeting.objects.get(flag__key=TOOL_MODE, environment__key="development")
    result = submitting.targeting_change_submit(targeting=targeting, changes={"default_serve": {"variation": "write"}},
                                              actor=user("owner"))
    assert isinstance(result, Targeting) and result.default_serve == {"variation": "write"}


def test_preview__says_what_submit_would_do_and_writes_nothing(demo) -> None:
    targeting = production()
    before = AuditEvent.objects.count()
    preview = submitting.preview_targeting_change(targeting=targeting, changes={"rules": [*targeting.rules, BETA_WRITE]})
    assert not preview.applies_now and preview.required_approvals == 2
    assert any(r.escalation for r in preview.reasons)
    assert [line.text for line in preview.lines] == [
        "tool mode for beta_accounts (new rule): read_only (risk 1) → write (risk 4)"]
    safer = submitting.preview_targeting_change(targeting=targeting, changes={"enabled": False})
    assert safer.applies_now and safer.governed
    with pytest.raises(ValidationError):
        submitting.preview_targeting_change(targeting=targeting, changes={"rules": [{"clauses": "nope"}]})
    assert AuditEvent.objects.count() == before and not ChangeRequest.objects.exists()


def test_submit__stale_expected_version__refused(demo) -> None:
    targeting = production()
    with pytest.raises(ValidationError, match="changed since"):
        submitting.targeting_change_submit(targeting=targeting, changes={"rules": []}, reason="x",
                                         expected_version=targeting.version - 1, actor=user("owner"))


def test_operator_roll_back__split_to_baseline_applies_at_once_with_follow_up(demo) -> None:
    targeting = production(PROFILE)
    rules = [dict(rule) for rule in targeting.rules]
    rules[1]["serve"] = {"variation": "baseline_v3"}  # the 5 % split back to the baseline
    result = submitting.targeting_change_submit(targeting=targeting, changes={"rules": rules},
                                              reason="candidate cites stale docs", actor=user("operator"))
    assert isinstance(result, Targeting) and production(PROFILE).rules[1]["serve"] == {"variation": "baseline_v3"}
    follow_up = FollowUp.objects.get()
    assert follow_up.kind == "rollback" and follow_up.opened_by == user("operator")
    assert inbox("owner") == ["Rolled back: support_assistant_profile moved towards its fallback in Production"]


def test_operator__cannot_raise_risk_editor_de_escalation_leaves_no_follow_up(demo) -> None:
    targeting = production()
    with pytest.raises(ValidationError, match="Operators move traffic towards the fallback only"):
        submitting.targeting_change_submit(targeting=targeting, changes={"rules": [*targeting.rules, BETA_WRITE]},
                                         reason="x", actor=user("operator"))
    assert not ChangeRequest.objects.exists()
    submitting.targeting_change_submit(targeting=production(), changes={"rules": []}, reason="internal trial over",
                                     actor=user("owner"))
    assert not FollowUp.objects.exists()


@pytest.mark.usefixtures("fresh_caches")  # as it ran among the rollout plans' tests
def test_submit__force_request_outside_governed_environments__change_request_not_for_operators(catalog: Any) -> None:
    # Given a change that would apply at once in development
    development = Targeting.objects.get(flag__key=PROFILE, environment__key="development")
    version = development.version
    # When it is forced through a request (a rollout stage that needs approval)
    result = submitting.targeting_change_submit(targeting=development, changes={"rules": []}, reason="stage 5",
                                              actor=user("owner"), force_request=True)
    # Then it waits for approval, and nothing was applied
    assert isinstance(result, ChangeRequest) and result.required_approvals >= 1
    assert [r["code"] for r in result.reasons][-1] == "approval_required"
    assert Targeting.objects.get(pk=development.pk).version == version
    with pytest.raises(ValidationError, match="proposed by the flag's owner or an editor"):
        submitting.targeting_change_submit(targeting=development, changes={"rules": []}, reason="x",
                                         actor=user("operator"), force_request=True)

