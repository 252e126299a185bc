"""The de-escalation path (kill switch, incident mode, follow-ups), comments, approval-policy
editing, the preview before submitting, and who hears about what."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from flags import services as flag_services
from flags.models import Environment, Targeting
from notifications.models import Notification
from rollouts.change_control import (
    applying,
    approval_policy,
    approving,
    follow_ups,
    incident_mode,
    kill_switch,
    submitting,
)
from rollouts.models import ApprovalPolicy, ChangeRequest, FollowUp, Incident
from tests.rollouts.support import BETA_WRITE, escalate, production, user

pytestmark = pytest.mark.django_db
PROFILE = "support_assistant_profile"


def inbox(name: str) -> list[str]:
    return list(Notification.objects.filter(recipient=user(name)).values_list("title", flat=True))


def test_new_request__approvers_notified_not_the_requester(demo) -> None:
    change_request = escalate()
    for approver in ("pm", "lead"):
        assert inbox(approver) == [f"Approval needed: CR-{change_request.pk} support_agent_tool_mode in Production"]
    assert inbox("owner") == [] and inbox("operator") == []


def test_decisions__requester_notified_of_approval_rejection_and_expiry(demo) -> None:
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    assert inbox("owner") == []  # one of two: not decided yet
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    assert inbox("owner") == [f"Approved: CR-{change_request.pk} support_agent_tool_mode in Production"]
    other = submitting.targeting_change_submit(
        targeting=production(PROFILE), changes={"default_serve": {"variation": "citation_first_v4"}},
        reason="everyone on v4", actor=user("owner"))
    approving.change_request_reject(change_request=other, actor=user("lead"), comment="not before the evidence")
    assert f"Rejected: CR-{other.pk} support_assistant_profile in Production" in inbox("owner")


def test_comment__participants_only_audited_and_requester_told(demo) -> None:
    change_request = escalate()
    with pytest.raises(ValidationError, match="Commenting needs"):
        approving.change_request_comment(change_request=change_request, body="hm", actor=user("auditor"))
    with pytest.raises(ValidationError):
        approving.change_request_comment(change_request=change_request, body="   ", actor=user("pm"))
    approving.change_request_comment(change_request=change_request, body="Which tickets?", actor=user("pm"))
    assert change_request.comments.get().body == "Which tickets?"
    assert AuditEvent.objects.get(action="change_request.commented").change_request_id == change_request.pk
    assert any(t.startswith("New comment") for t in inbox("owner"))


def test_killswitch__fallback_follow_up_and_owner_and_approvers_told(demo) -> None:
    targeting = production(PROFILE)
    kill_switch.killswitch_flip(targeting=targeting, reason="hallucinated refunds", actor=user("operator"))
    assert production(PROFILE).enabled is False
    follow_up = FollowUp.objects.get()
    assert follow_up.kind == "killswitch" and follow_up.flag.key == PROFILE and follow_up.acknowledged_at is None
    title = "Kill switch: support_assistant_profile sent to baseline_v3 in Production"
    assert inbox("owner") == [title] and inbox("pm") == [title] and inbox("lead") == [title]
    assert inbox("operator") == []
    # Flipping an already-off flag is refused rather than recorded twice
    with pytest.raises(ValidationError, match="already off"):
        kill_switch.killswitch_flip(targeting=targeting, reason="again", actor=user("operator"))


def test_killswitch__open_request_on_the_flag_then_conflicts(demo) -> None:
    change_request = escalate()
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    approving.change_request_approve(change_request=change_request, actor=user("lead"))
    kill_switch.killswitch_flip(targeting=production(), reason="incident", actor=user("operator"))
    result = applying.change_request_apply(change_request=change_request, actor=user("owner"))
    assert result.status == "conflicted" and production().enabled is False


def test_follow_up__acknowledged_by_a_second_person_with_a_note(demo) -> None:
    kill_switch.killswitch_flip(targeting=production(PROFILE), reason="bad answers", actor=user("operator"))
    follow_up = FollowUp.objects.get()
    with pytest.raises(ValidationError, match="someone else"):
        follow_ups.follow_up_acknowledge(follow_up=follow_up, note="fine", actor=user("operator"))
    with pytest.raises(ValidationError, match="role"):
        follow_ups.follow_up_acknowledge(follow_up=follow_up, note="fine", actor=user("auditor"))
    with pytest.raises(ValidationError):
        follow_ups.follow_up_acknowledge(follow_up=follow_up, note=" ", actor=user("pm"))
    follow_ups.follow_up_acknowledge(follow_up=follow_up, note="Prompt regression; fix in v5", actor=user("pm"))
    follow_up.refresh_from_db()
    assert follow_up.acknowledged_by == user("pm") and follow_up.note == "Prompt regression; fix in v5"
    assert AuditEvent.objects.filter(action="follow_up.acknowledged").count() == 1
    with pytest.raises(ValidationError, match="already"):
        follow_ups.follow_up_acknowledge(follow_up=follow_up, note="again", actor=user("lead"))


def test_incident_mode__chosen_surfaces_to_fallback_then_lifted(demo) -> None:
    env = Environment.objects.get(key="production")
    with pytest.raises(ValidationError, match="operator"):
        incident_mode.incident_start(environment=env, surfaces=[], reason="x", actor=user("owner"))
    with pytest.raises(ValidationError):
        incident_mode.incident_start(environment=env, surfaces=["no_such_surface"], reason="x", actor=user("operator"))
    incident = incident_mode.incident_start(environment=env, surfaces=["agent_tools"], reason="tool misuse",
                                       actor=user("operator"))
    assert [a["flag"] for a in incident.affected] == ["support_agent_tool_mode"]
    assert production().enabled is False and production(PROFILE).enabled is True  # other surfaces untouched
    assert FollowUp.objects.get().incident == incident
    assert AuditEvent.objects.get(action="incident.started").reason == "tool misuse"
    with pytest.raises(ValidationError, match="already on"):
        incident_mode.incident_start(environment=env, surfaces=[], reason="again", actor=user("operator"))
    incident_mode.incident_lift(incident=incident, reason="fixed", actor=user("operator"))
    assert production().enabled is True
    assert Incident.objects.get().lifted_at is not None
    assert AuditEvent.objects.get(action="incident.lifted").after == {"restored": ["support_agent_tool_mode"],
                                                                        "left": []}
    with pytest.raises(ValidationError, match="lifted already"):
        incident_mode.incident_lift(incident=incident, reason="twice", actor=user("operator"))


def test_incident_mode__everything_then_a_flag_changed_meanwhile_stays_as_it_is(demo) -> None:
    env = Environment.objects.get(key="production")
    incident = incident_mode.incident_start(environment=env, surfaces=[], reason="provider outage", actor=user("operator"))
    assert sorted(a["flag"] for a in incident.affected) == ["support_agent_tool_mode", "support_assistant_profile"]
    assert not Targeting.objects.filter(environment=env, enabled=True).exists()
    # Someone reshapes the profile flag's targeting during the incident
    flag_services.targeting_update(targeting=production(PROFILE), actor=user("owner"), rules=[], reason="simplify")
    lifted = incident_mode.incident_lift(incident=incident, reason="provider back", actor=user("operator"))
    assert lifted.restored == ["support_agent_tool_mode"] and lifted.left == ["support_assistant_profile"]
    assert production().enabled is True and production(PROFILE).enabled is False


def test_incident_mode__nothing_on__refused_and_nothing_written(demo) -> None:
    env = Environment.objects.get(key="production")
    before = AuditEvent.objects.count()
    with pytest.raises(ValidationError, match="nothing to send"):
        incident_mode.incident_start(environment=env, surfaces=["fallback_mode"], reason="x", actor=user("operator"))
    assert AuditEvent.objects.count() == before and not Incident.objects.exists()


def test_approval_policy__admin_only_validated_and_audited(demo) -> None:
    env = Environment.objects.get(key="production")
    with pytest.raises(ValidationError, match="admin"):
        approval_policy.approval_policy_update(environment=env, actor=user("owner"), approvals_for_escalation=1)
    for bad in ({"approvals_for_escalation": 0}, {"approvals_otherwise": "2"}, {"expire_after_days": 91},
                {"approvals_otherwise": 3}, {"nonsense": 1}):
        with pytest.raises(ValidationError):
            approval_policy.approval_policy_update(environment=env, actor=user("admin"), **bad)
    assert not ApprovalPolicy.objects.exists()
    approval_policy.approval_policy_update(environment=env, actor=user("admin"), approvals_for_escalation=3,
                                    approvals_otherwise=2, expire_after_days=3)
    event = AuditEvent.objects.get(action="approval_policy.updated")
    assert event.before["approvals_for_escalation"] == 2 and event.after["approvals_for_escalation"] == 3
    # The new numbers apply to requests opened from now on
    assert escalate().required_approvals == 3


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
