"""Rollout plans' state machine (rollouts/plans/transitions.py): each action with its reason, by the
roles that may take it, in the states it applies to; bake time; exposure that only grows, as the
engine serves it; stages that need approval go through change control; roll-back at once in
production; stepping back (a breach's default) only from a later stage of a running plan whose
flag is on; a flag that is off is never turned on by a plan; concurrent advances."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from audit.models import AuditEvent
from audit.services import SystemActor
from flags.demo import seed_demo
from flags.models import Targeting
from rollouts.change_control import applying, kill_switch
from rollouts.models import ChangeRequest, ReleaseDecision, RolloutPlan
from rollouts.plans import transitions
from telemetry.demo import seed_demo_metrics
from tests.concurrency import run_together
from tests.rollouts.plans.support import (
    BASELINE,
    CANDIDATE,
    approve_and_apply,
    baked,
    flag,
    fresh,
    make_plan,
    served,
    targeting,
    template_plan,
)
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db


# --- the state machine -----------------------------------------------------------------------


def test_start__staging__first_stage_applied_with_plan_rule_first(catalog: Any) -> None:
    plan = template_plan()
    # When the owner starts it in staging (not governed)
    plan = transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    # Then the first stage is live: the plan's rule first, the flag's own rules kept, baseline by default
    assert (plan.status, plan.stage_index) == ("running", 0) and plan.stage_entered_at is not None
    rules = targeting("staging").rules
    assert rules[0]["id"] == f"plan-{plan.pk}" and rules[0]["serve"] == {"variation": CANDIDATE}
    assert [r["id"] for r in rules[1:]] == ["internal", "beta-50"]
    assert targeting("staging").default_serve == {"variation": BASELINE}
    # and the decision and its audit row are written
    decision = ReleaseDecision.objects.get(plan=plan)
    assert (decision.action, decision.from_stage, decision.to_stage, decision.actor_label) == ("start", -1, 0, "owner")
    assert "variants" in decision.evidence and "guardrails" in decision.evidence
    assert AuditEvent.objects.filter(action="plan.started", flag_id=flag().pk).count() == 1


def test_start__flag_off_in_that_environment__refused_and_nothing_turns_on(catalog: Any) -> None:
    # Given the operator stopped the flag in staging
    staging = flag().targetings.get(environment__key="staging")
    kill_switch.killswitch_flip(targeting=staging, reason="Bad answers", actor=user("operator"))
    plan = make_plan()
    # When the owner starts a plan there
    with pytest.raises(ValidationError, match="is off in Staging: turn it on first"):
        transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    # Then the plan is still a draft and the flag stays off
    staging.refresh_from_db()
    assert (RolloutPlan.objects.get(pk=plan.pk).status, staging.enabled) == ("draft", False)


def test_transitions__wrong_state_or_role__refused_with_the_reason(catalog: Any) -> None:
    plan = template_plan()
    owner, operator, auditor = user("owner"), user("operator"), user("auditor")
    # a draft can only be started
    for action, verb in ((transitions.plan_advance, "advanced"), (transitions.plan_pause, "paused"),
                         (transitions.plan_resume, "resumed"), (transitions.plan_promote, "promoted"),
                         (transitions.plan_rollback, "rolled back")):
        with pytest.raises(ValidationError, match=f"A draft plan cannot be {verb}"):
            action(plan=plan, reason="x", actor=owner)
    with pytest.raises(ValidationError, match="owner or editor"):
        transitions.plan_start(plan=plan, reason="x", actor=operator)
    with pytest.raises(ValidationError, match="Say why"):
        transitions.plan_start(plan=plan, reason=" ", actor=owner)
    transitions.plan_start(plan=plan, reason="go", actor=owner)
    with pytest.raises(ValidationError, match="A running plan cannot be started"):
        transitions.plan_start(plan=plan, reason="again", actor=owner)
    with pytest.raises(ValidationError, match="A running plan cannot be resumed"):
        transitions.plan_resume(plan=plan, reason="x", actor=owner)
    # operators pause and roll back, but do not expand
    with pytest.raises(ValidationError, match="owner or editor"):
        transitions.plan_advance(plan=baked(plan), reason="x", actor=operator)
    with pytest.raises(ValidationError, match="operator, flag owner or editor"):
        transitions.plan_pause(plan=plan, reason="x", actor=auditor)
    transitions.plan_pause(plan=plan, reason="looks odd", actor=operator)
    with pytest.raises(ValidationError, match="A paused plan cannot be advanced"):
        transitions.plan_advance(plan=plan, reason="x", actor=owner)
    with pytest.raises(ValidationError, match="A paused plan cannot be paused"):
        transitions.plan_pause(plan=plan, reason="x", actor=operator)
    with pytest.raises(ValidationError, match="owner or editor"):
        transitions.plan_resume(plan=plan, reason="x", actor=operator)
    transitions.plan_resume(plan=plan, reason="fine after all", actor=owner)
    transitions.plan_rollback(plan=plan, reason="abandon", actor=operator)
    # a rolled-back plan is closed
    for action, verb in ((transitions.plan_advance, "advanced"), (transitions.plan_resume, "resumed"),
                         (transitions.plan_rollback, "rolled back"), (transitions.plan_investigate, "marked for investigation")):
        with pytest.raises(ValidationError, match=f"A rolled back plan cannot be {verb}"):
            action(plan=plan, reason="x", actor=owner)
    assert list(ReleaseDecision.objects.filter(plan=plan).values_list("action", flat=True)) == [
        "start", "pause", "resume", "rollback"]
    assert [a for a in AuditEvent.objects.filter(action__startswith="plan.").order_by("id").values_list("action", flat=True)] == [
        "plan.created", "plan.started", "plan.paused", "plan.resumed", "plan.rolled_back"]
    # and a new plan may be opened once the old one is closed
    assert template_plan().status == "draft"


def test_advance__before_bake_time__refused_with_time_left(catalog: Any) -> None:
    plan = transitions.plan_start(plan=template_plan(), reason="go", actor=user("owner"))
    with pytest.raises(ValidationError, match=r"Stage 1 \(Internal users\) bakes for at least 60 minutes: .* left"):
        transitions.plan_advance(plan=plan, reason="hurry", actor=user("owner"))
    plan = transitions.plan_advance(plan=baked(plan, minutes=61), reason="baked", actor=user("owner"))
    assert plan.stage_index == 1


def test_investigate__marks_attention_without_changing_traffic(catalog: Any) -> None:
    plan = transitions.plan_start(plan=template_plan(), reason="go", actor=user("owner"))
    version = targeting("staging").version
    with pytest.raises(ValidationError, match="takes part in changes"):
        transitions.plan_investigate(plan=plan, reason="?", actor=user("auditor"))
    plan = transitions.plan_investigate(plan=plan, reason="odd citations in transcripts", actor=user("operator"))
    assert plan.needs_attention and plan.status == "running"
    assert targeting("staging").version == version
    assert AuditEvent.objects.get(action="plan.investigated").reason == "odd citations in transcripts"


# --- exposure and approval -------------------------------------------------------------------


def test_stages__exposure_only_grows_and_engine_follows_each_stage(catalog: Any) -> None:
    # Given a running plan in staging
    plan = transitions.plan_start(plan=template_plan(), reason="go", actor=user("owner"))
    units = ["acct-internal-001", "acct-beta-101", *[f"acct-{i}" for i in range(2000)]]
    exposed: list[set[str]] = []
    for index in range(4):
        # the engine serves what the current stage means
        result = served("staging", units)
        exposed.append({u for u, v in result.items() if v == CANDIDATE})
        assert result["acct-internal-001"] == CANDIDATE
        if index >= 1:
            assert result["acct-beta-101"] == CANDIDATE
        if index < 3:
            plan = transitions.plan_advance(plan=baked(plan), reason=f"stage {index + 2}", actor=user("owner"))
    # Then each stage's candidate audience contains the previous one, and the split widened as planned
    assert all(a <= b for a, b in zip(exposed, exposed[1:], strict=False))
    assert 0.03 < len(exposed[2]) / len(units) < 0.08 and 0.45 < len(exposed[3]) / len(units) < 0.55
    assert targeting("staging").default_serve["split"][-1]["variation"] == CANDIDATE  # candidate listed last


def test_advance__stage_needing_approval_in_staging__change_request_then_moves_when_applied(catalog: Any) -> None:
    # Given a plan at the 50 % stage in staging (not governed)
    plan = transitions.plan_start(plan=template_plan(), reason="go", actor=user("owner"))
    for _ in range(3):
        plan = transitions.plan_advance(plan=baked(plan), reason="next", actor=user("owner"))
    version = targeting("staging").version
    # When the owner advances into the default stage, which needs approval
    plan = transitions.plan_advance(plan=baked(plan), reason="50 % looks good", actor=user("owner"))
    # Then a change request is open, traffic has not moved, the plan waits
    change_request = plan.pending_change_request
    assert isinstance(change_request, ChangeRequest) and change_request.status == "pending"
    assert plan.stage_index == 3 and targeting("staging").version == version
    assert any(r["code"] == "approval_required" for r in change_request.reasons)
    assert AuditEvent.objects.filter(action="plan.advance_requested", change_request_id=change_request.pk).exists()
    with pytest.raises(ValidationError, match=f"Waiting for CR-{change_request.pk}"):
        transitions.plan_advance(plan=plan, reason="again", actor=user("owner"))
    # When it is approved and applied, and the plan synced
    approve_and_apply(change_request)
    plan = transitions.plan_sync(plan)
    # Then the plan is in the last stage and everyone gets the candidate
    assert (plan.stage_index, plan.pending_change_request) == (4, None)
    assert set(served("staging", [f"acct-{i}" for i in range(200)]).values()) == {CANDIDATE}
    sync = ReleaseDecision.objects.filter(plan=plan).last()
    assert (sync.action, sync.to_stage, sync.actor_label, sync.change_request_id) == (
        "advance", 4, "system:rollout-plans", change_request.pk)
    # and promoting completes it (no later stage needs approval: applies at once)
    with pytest.raises(ValidationError, match="last stage: promote"):
        transitions.plan_advance(plan=plan, reason="more", actor=user("owner"))
    plan = transitions.plan_promote(plan=plan, reason="winner", actor=user("owner"))
    assert plan.status == "completed"
    assert targeting("staging").default_serve == {"variation": CANDIDATE}
    assert all(r["id"] != f"plan-{plan.pk}" for r in targeting("staging").rules)


def test_promote__skipping_a_stage_that_needs_approval__opens_a_request(catalog: Any) -> None:
    plan = transitions.plan_start(plan=template_plan(), reason="go", actor=user("owner"))
    plan = transitions.plan_promote(plan=baked(plan), reason="skip ahead", actor=user("owner"))
    assert plan.status == "running" and plan.pending_change_request is not None
    approve_and_apply(plan.pending_change_request)
    assert transitions.plan_sync(plan).status == "completed"
    assert AuditEvent.objects.filter(action="plan.promoted").count() == 1


def production_plan_waiting_at_beta() -> RolloutPlan:
    """A production plan in its first stage (internal users already get the candidate there, so
    the policy applies it at once) whose advance to all beta accounts waits for approval."""
    plan = transitions.plan_start(plan=template_plan("production"), reason="go", actor=user("owner"))
    assert (plan.status, plan.stage_index, plan.pending_change_request) == ("running", 0, None)
    plan = transitions.plan_advance(plan=baked(plan), reason="beta next", actor=user("owner"))
    assert plan.stage_index == 0 and plan.pending_change_request.status == "pending"
    return plan


def test_production__advance_through_approval__rollback_at_once_by_operator(catalog: Any) -> None:
    # Given a production plan (governed) whose widening to beta accounts waited for approval
    plan = production_plan_waiting_at_beta()
    approve_and_apply(plan.pending_change_request)
    plan = transitions.plan_sync(plan)
    assert plan.stage_index == 1 and transitions.plan_sync(plan).stage_index == 1  # idempotent
    assert set(served("production", ["acct-beta-101", "acct-beta-102", "acct-beta-103"]).values()) == {CANDIDATE}
    # When the operator rolls it back
    plan = transitions.plan_rollback(plan=plan, reason="citations broken", actor=user("operator"))
    # Then it applies at once: everyone, internal users included, gets the baseline
    assert plan.status == "rolled_back"
    assert set(served("production", ["acct-internal-001", "acct-beta-101", "acct-7"]).values()) == {BASELINE}
    assert not ChangeRequest.objects.filter(status="pending").exists()
    assert AuditEvent.objects.get(action="plan.rolled_back").actor_label.endswith("(operator)")
    assert AuditEvent.objects.filter(action="targeting.updated", reason__contains="rolled back").exists()


def test_rollback__cancels_the_pending_request(catalog: Any) -> None:
    plan = production_plan_waiting_at_beta()
    change_request = plan.pending_change_request
    plan = transitions.plan_rollback(plan=plan, reason="changed our mind", actor=user("owner"))
    assert ChangeRequest.objects.get(pk=change_request.pk).status == "cancelled"
    assert plan.pending_change_request is None and plan.status == "rolled_back"
    assert AuditEvent.objects.filter(action="change_request.cancelled", change_request_id=change_request.pk).exists()
    with pytest.raises(ValidationError, match="Only an approved request"):
        applying.change_request_apply(change_request=change_request, actor=user("owner"))


def step_back(plan: RolloutPlan) -> RolloutPlan:
    """What a breach's sweep does: step back under the plan's lock, as the system."""
    with transaction.atomic():
        return transitions.step_back_locked(transitions.locked(plan), reason="latency breached",
                                            actor=SystemActor("guardrails"), evidence={})


def test_step_back__first_stage_or_flag_off_or_not_running__refused_and_nothing_changes(catalog: Any) -> None:
    # Given a running plan in its first stage: there is no earlier stage to return to
    plan = transitions.plan_start(plan=template_plan(), reason="go", actor=user("owner"))
    with pytest.raises(ValidationError, match="first stage: there is no earlier stage to return to; roll it back"):
        step_back(plan)
    # Given it in its second stage, with the flag turned off behind its back (the kill switch
    # pauses plans in the same transaction; this is the race it could lose)
    plan = transitions.plan_advance(plan=baked(plan), reason="beta", actor=user("owner"))
    Targeting.objects.filter(pk=targeting("staging").pk).update(enabled=False)
    version = targeting("staging").version
    # Then stepping back is refused: a stage's targeting would turn the flag on
    with pytest.raises(ValidationError, match="is off in Staging: stepping back would turn it on"):
        step_back(plan)
    assert (targeting("staging").enabled, targeting("staging").version) == (False, version)
    assert (fresh(plan).status, fresh(plan).stage_index) == ("running", 1)
    # Given the flag on again and the plan paused, then only a running plan steps back
    Targeting.objects.filter(pk=targeting("staging").pk).update(enabled=True)
    plan = transitions.plan_pause(plan=plan, reason="look", actor=user("owner"))
    with pytest.raises(ValidationError, match="A paused plan cannot be stepped back"):
        step_back(plan)
    assert not ReleaseDecision.objects.filter(plan=plan, action="step_back").exists()
    assert not AuditEvent.objects.filter(action="plan.stepped_back").exists()


def test_step_back__running_later_stage__previous_stage_traffic_and_paused(catalog: Any) -> None:
    # Given a running plan in its second stage (beta accounts)
    plan = transitions.plan_start(plan=template_plan(), reason="go", actor=user("owner"))
    plan = transitions.plan_advance(plan=baked(plan), reason="beta", actor=user("owner"))
    assert served("staging", ["acct-beta-103"]) == {"acct-beta-103": CANDIDATE}
    # When it steps back
    plan = step_back(plan)
    # Then the plan's rule is the first stage's again (internal users only) and the plan waits, paused
    assert (fresh(plan).status, fresh(plan).stage_index) == ("paused", 0)
    rules = targeting("staging").rules
    assert (rules[0]["id"], rules[0]["clauses"]) == (f"plan-{plan.pk}",
                                                     [{"op": "in_segment", "values": ["internal_users"]}])
    # and the flag's own rules stay behind it, the default serves the baseline
    assert [rule["id"] for rule in rules[1:]] == ["internal", "beta-50"]
    assert targeting("staging").default_serve == {"variation": BASELINE}
    assert served("staging", ["acct-internal-001"]) == {"acct-internal-001": CANDIDATE}
    decision = ReleaseDecision.objects.filter(plan=plan).latest("id")
    assert (decision.action, decision.from_stage, decision.to_stage, decision.actor_label) == (
        "step_back", 1, 0, "system:guardrails")
    row = AuditEvent.objects.get(action="plan.stepped_back")
    assert (row.before["stage_index"], row.after["stage_index"], row.after["status"]) == (1, 0, "paused")


# --- concurrency -----------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_races__two_advances_at_once__one_moves_the_plan() -> None:
    project, _ = seed_demo()
    seed_demo_metrics(project)
    plan = transitions.plan_start(plan=template_plan(), reason="go", actor=user("owner"))
    plan = baked(plan)

    def advance() -> str:
        try:
            transitions.plan_advance(plan=plan, reason="next", actor=user("owner"))
            return "ok"
        except ValidationError:
            return "refused"

    outcomes, errors = run_together(advance, advance)
    # The second waits on the row lock, then sees the fresh stage's bake time
    assert sorted(outcomes) == ["ok", "refused"], errors
    assert fresh(plan).stage_index == 1
    assert ReleaseDecision.objects.filter(plan=plan, action="advance").count() == 1
    assert AuditEvent.objects.filter(action="plan.advanced").count() == 1

