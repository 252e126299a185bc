"""Free-text limits on the change-control paths: reasons, comments and notes longer than their
TEXT_LIMITS entry are refused with a clear error on the field before anything is written (no
targeting change, no request, no audit row); the console shows the error beside the field and
never lets a browser cut the text."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from notifications.models import Notification
from rollouts.change_control import applying, approving, follow_ups, incident_mode, kill_switch, submitting
from rollouts.flags_as_code.importing import import_contracts
from rollouts.forms import CommentForm, DecisionForm, PlanReasonForm, ReasonForm
from rollouts.models import Approval, ChangeRequest, ChangeRequestComment, FollowUp, Incident, RolloutPlan
from rollouts.plans import design, transitions
from tests.rollouts.support import BETA_WRITE, escalate, production, user

pytestmark = pytest.mark.django_db
PROFILE = "support_assistant_profile"
TOO_LONG_REASON = "Keep the reason to 2,000 characters at most (this one has 2,001)."


def _written() -> tuple[int, ...]:
    """Everything a refused call must leave as it was."""
    return (AuditEvent.objects.count(), ChangeRequest.objects.count(), Approval.objects.count(),
            ChangeRequestComment.objects.count(), FollowUp.objects.count(), Incident.objects.count(),
            Notification.objects.count())


def test_killswitch_flip__reason_of_2001_characters__refused_and_nothing_written(demo) -> None:
    # Given a flag on in production
    targeting = production(PROFILE)
    assert targeting.enabled
    version, before = targeting.version, _written()
    # When an operator flips its kill switch with a 2,001-character reason
    with pytest.raises(ValidationError) as refused:
        kill_switch.killswitch_flip(targeting=targeting, reason="x" * 2_001, actor=user("operator"))
    # Then the error says why, on the reason; the flag still serves; nothing is recorded
    assert refused.value.message_dict == {"reason": [TOO_LONG_REASON]}
    assert production(PROFILE).enabled and production(PROFILE).version == version
    assert _written() == before


def test_killswitch_flip__reason_of_exactly_2000_characters__kept_whole_in_the_audit(demo) -> None:
    reason = "y" * 2_000
    kill_switch.killswitch_flip(targeting=production(PROFILE), reason=reason, actor=user("operator"))
    assert AuditEvent.objects.get(action="killswitch.flipped").reason == reason
    # the targeting row carries it after the code's "Kill switch: " prefix, whole
    assert AuditEvent.objects.filter(action="targeting.updated").latest("id").reason == f"Kill switch: {reason}"


def test_killswitch_console__reason_over_the_limit__422_error_beside_the_field_no_maxlength(client, demo) -> None:
    client.force_login(user("operator"))
    url = f"/p/support-assistant/flags/{PROFILE}/killswitch/production/"
    assert "maxlength" not in client.get(url, headers={"HX-Request": "true"}).content.decode()
    before = _written()
    response = client.post(url, {"reason": "z" * 2_345}, headers={"HX-Request": "true"})
    assert response.status_code == 422
    assert "Keep the reason to 2,000 characters at most (this one has 2,345)." in response.content.decode()
    assert production(PROFILE).enabled and _written()[0] == before[0]


def test_incident_start__reason_over_the_limit__refused_and_nothing_written(demo) -> None:
    before = _written()
    with pytest.raises(ValidationError) as refused:
        incident_mode.incident_start(environment=production().environment, surfaces=[], reason="i" * 2_001,
                                actor=user("operator"))
    assert refused.value.message_dict == {"reason": [TOO_LONG_REASON]}
    assert production(PROFILE).enabled and _written() == before


def test_incident_lift__reason_over_the_limit__refused_and_flags_stay_off(demo) -> None:
    incident = incident_mode.incident_start(environment=production().environment, surfaces=[], reason="outage",
                                       actor=user("operator"))
    before = _written()
    with pytest.raises(ValidationError, match="this one has 2,001"):
        incident_mode.incident_lift(incident=incident, reason="l" * 2_001, actor=user("operator"))
    assert Incident.objects.get(pk=incident.pk).lifted_at is None and not production(PROFILE).enabled
    assert _written() == before


def test_targeting_change_submit__reason_over_the_limit__refused_no_change_request(demo) -> None:
    targeting = production()
    before = _written()
    with pytest.raises(ValidationError) as refused:
        submitting.targeting_change_submit(targeting=targeting, changes={"rules": [*targeting.rules, BETA_WRITE]},
                                         reason="w" * 2_001, actor=user("owner"))
    assert refused.value.message_dict == {"reason": [TOO_LONG_REASON]}
    assert _written() == before


def test_change_request_comment__over_the_limit__refused_and_nothing_written(demo) -> None:
    change_request = escalate()
    before = _written()
    with pytest.raises(ValidationError) as refused:
        approving.change_request_comment(change_request=change_request, body="c" * 5_001, actor=user("pm"))
    assert refused.value.message_dict == {
        "body": ["Keep the comment to 5,000 characters at most (this one has 5,001)."]}
    assert _written() == before


@pytest.mark.parametrize("decide", [approving.change_request_approve, approving.change_request_reject])
def test_change_request_decision__comment_over_the_limit__refused_and_still_pending(demo, decide) -> None:
    change_request = escalate()
    before = _written()
    with pytest.raises(ValidationError) as refused:
        decide(change_request=change_request, actor=user("pm"), comment="a" * 5_001)
    assert refused.value.message_dict == {
        "comment": ["Keep the comment to 5,000 characters at most (this one has 5,001)."]}
    assert ChangeRequest.objects.get(pk=change_request.pk).status == ChangeRequest.Status.PENDING
    assert _written() == before


def test_change_request_cancel__reason_over_the_limit__refused_and_still_pending(demo) -> None:
    change_request = escalate()
    with pytest.raises(ValidationError, match="this one has 2,001"):
        applying.change_request_cancel(change_request=change_request, actor=user("owner"), reason="n" * 2_001)
    assert ChangeRequest.objects.get(pk=change_request.pk).status == ChangeRequest.Status.PENDING


def test_follow_up_acknowledge__note_over_the_limit__refused_and_still_open(demo) -> None:
    kill_switch.killswitch_flip(targeting=production(PROFILE), reason="stale docs", actor=user("operator"))
    follow_up = FollowUp.objects.get()
    before = _written()
    with pytest.raises(ValidationError) as refused:
        follow_ups.follow_up_acknowledge(follow_up=follow_up, note="n" * 2_001, actor=user("pm"))
    assert refused.value.message_dict == {"note": ["Keep the note to 2,000 characters at most (this one has 2,001)."]}
    assert FollowUp.objects.get(pk=follow_up.pk).acknowledged_at is None and _written() == before


def _plan() -> RolloutPlan:
    from flags.models import Environment, Flag

    flag = Flag.objects.get(key=PROFILE)
    staging = Environment.objects.get(project=flag.project, key="staging")
    return design.plan_create(flag=flag, environment=staging, baseline="baseline_v3", candidate="citation_first_v4",
                             stages=[{"name": "Internal users, asked for approval", "segments": ["internal_users"],
                                      "needs_approval": True}],
                             actor=user("owner"), reason="v4 is ready")


def test_plan_start__reason_at_the_plan_limit__its_change_request_keeps_it_whole_within_2000(demo) -> None:
    # A plan's reason opens the stage's change request after the plan's own words: 1,800 fits.
    reason = "s" * 1_800
    plan = transitions.plan_start(plan=_plan(), reason=reason, actor=user("owner"))
    change_request = RolloutPlan.objects.get(pk=plan.pk).pending_change_request
    assert change_request.reason.endswith(": " + reason) and len(change_request.reason) <= 2_000


def test_plan_start__reason_over_the_plan_limit__refused_and_nothing_written(demo) -> None:
    plan = _plan()
    before = _written()
    with pytest.raises(ValidationError) as refused:
        transitions.plan_start(plan=plan, reason="s" * 1_801, actor=user("owner"))
    assert refused.value.message_dict == {
        "reason": ["Keep the reason to 1,800 characters at most (this one has 1,801)."]}
    assert RolloutPlan.objects.get(pk=plan.pk).status == RolloutPlan.Status.DRAFT and _written() == before


def test_import_contracts__reason_over_the_limit__a_problem_and_nothing_applied(demo) -> None:
    before = _written()
    result = import_contracts(project=demo, text=f"ai_featureops_contract: {{flag_key: {PROFILE}, name: Renamed}}",
                              actor=user("owner"), reason="r" * 2_001)
    assert [str(p) for p in result.file_problems] == [f"reason: {TOO_LONG_REASON}"]
    assert not result.applied and _written() == before


@pytest.mark.parametrize(("form_class", "field", "limit"), [
    (ReasonForm, "reason", 2_000), (PlanReasonForm, "reason", 1_800), (DecisionForm, "comment", 5_000),
    (CommentForm, "body", 5_000)])
def test_forms__text_over_the_limit__error_beside_the_field_and_no_maxlength(form_class: Any, field: str,
                                                                             limit: int) -> None:
    form = form_class({field: "f" * (limit + 1)})
    assert not form.is_valid()
    assert form.errors[field] == [f"Keep the {'comment' if field == 'body' else field} to {limit:,} characters at most "
                                  f"(this one has {limit + 1:,})."]
    assert "maxlength" not in str(form[field])
    assert form_class({field: "f" * limit}).is_valid()
