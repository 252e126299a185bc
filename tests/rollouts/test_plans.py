"""Rollout plans: the seed template, validation, the state machine with its reasons, bake
time, exposure that only grows (as the engine serves it), stages through approval, roll-back
in production, guardrail breaches from real telemetry, and concurrent actions."""

from __future__ import annotations

import datetime
import threading
import uuid
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from audit.models import AuditEvent
from flags import services as flag_services
from flags.demo import seed_demo
from flags.evaluation.engine import compile_snapshot, evaluate
from flags.models import Environment, Flag, Targeting
from flags.snapshot_builder import build_environment_snapshot
from notifications.models import Notification
from rollouts.change_control import applying, approving, submitting
from rollouts.models import ChangeRequest, ReleaseDecision, RolloutPlan
from rollouts.plans import breaches, design, transitions
from rollouts.plans.guardrails import AMBER, GREEN, RED, evaluate_guardrail
from rollouts.tasks import check_guardrails as check_guardrails_task
from telemetry.demo import seed_demo_metrics
from telemetry.services import events_aggregate
from tests.factories import TEST_ACTOR
from tests.ofrep_client import call
from tests.rollouts.support import user

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_caches")]

PROFILE = "support_assistant_profile"
BASELINE, CANDIDATE = "baseline_v3", "citation_first_v4"
LATENCY = {"metric": "latency_p95", "kind": "relative_max", "threshold": 1.2, "min_samples": 50}






def environment(key: str) -> Environment:
    return Environment.objects.get(project__key="support-assistant", key=key)


def flag() -> Flag:
    return Flag.objects.get(key=PROFILE)


def targeting(env_key: str) -> Targeting:
    return Targeting.objects.get(flag__key=PROFILE, environment__key=env_key)


def stage(name: str, segments: list[str], percentage: int = 0, **extra: Any) -> dict[str, Any]:
    return {"name": name, "segments": segments, "percentage": percentage, "min_bake_minutes": 0,
            "guardrails": [LATENCY], **extra}


def template_plan(env_key: str = "staging", **extra: Any) -> RolloutPlan:
    return design.plan_from_template(flag=flag(), environment=environment(env_key), candidate=CANDIDATE,
                                    actor=user("owner"), reason="Citation-first v4 is ready", **extra)


def baked(plan: RolloutPlan, minutes: int = 60 * 24 * 4) -> RolloutPlan:
    """Pretend the current stage was entered long ago (its bake time is over)."""
    RolloutPlan.objects.filter(pk=plan.pk).update(stage_entered_at=timezone.now() - datetime.timedelta(minutes=minutes))
    return RolloutPlan.objects.get(pk=plan.pk)


def fresh(plan: RolloutPlan) -> RolloutPlan:
    return RolloutPlan.objects.get(pk=plan.pk)


def served(env_key: str, units: list[str]) -> dict[str, str]:
    snapshot = compile_snapshot(build_environment_snapshot(environment(env_key).pk))
    return {unit: evaluate(snapshot, PROFILE, {"accountId": unit}).variant for unit in units}


def approve_and_apply(change_request: ChangeRequest) -> ChangeRequest:
    for approver in ("pm", "lead"):
        if ChangeRequest.objects.get(pk=change_request.pk).status == "pending":
            approving.change_request_approve(change_request=change_request, actor=user(approver))
    return applying.change_request_apply(change_request=change_request, actor=user("owner"))


# --- the template and validation -------------------------------------------------------------


def test_template__seed_path_with_guardrails_from_the_flag__draft(catalog: Any) -> None:
    # When the owner plans the profile's rollout from the template
    plan = template_plan()
    # Then the five stages of the seed article are there, exposure growing, the last needing approval
    stages = design.plan_stages(plan)
    assert [s.name for s in stages] == ["Internal users", "Beta accounts", "5 % of eligible traffic",
                                        "50 % experiment", "Default behaviour"]
    assert [s.percentage for s in stages] == [0, 0, 5_000, 50_000, 100_000]
    assert stages[0].segments == ["internal_users"] and stages[1].segments == ["internal_users", "beta_accounts"]
    assert [s.needs_approval for s in stages] == [False, False, False, False, True]
    assert all(s.min_bake_minutes > 0 for s in stages[:-1])
    # and guardrails from the flag's guardrail metrics
    assert {"metric": "latency_p95", "kind": "relative_max", "threshold": 1.2, "min_samples": 50} in stages[0].guardrails
    assert {g["metric"] for g in stages[0].guardrails} == set(flag().guardrail_metrics)
    assert (plan.status, plan.stage_index, plan.baseline, plan.assignment_unit) == ("draft", -1, BASELINE, "accountId")
    assert AuditEvent.objects.get(action="plan.created").actor_label.endswith("(owner)")


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"candidate": BASELINE}, "candidate", "must differ"),
    ({"candidate": "gpt_9"}, "candidate", "not a variation"),
    ({"stages": [stage("a", ["martians"])]}, "stages[0].segments", "Unknown segment"),
    ({"stages": [stage("a", [], 5_000), stage("b", [], 1_000)]}, "stages[1].percentage", "only grows"),
    ({"stages": [stage("a", ["beta_accounts"]), stage("b", ["internal_users"])]}, "stages[1].segments",
     "beta_accounts missing"),
    ({"stages": [stage("a", [], 200_000)]}, "stages[0].percentage", "0 to 100000"),
    ({"stages": [stage("a", [], guardrails=[{**LATENCY, "kind": "vibes"}])]}, "stages[0].guardrails[0]", "kind"),
    ({"stages": [stage("a", [], guardrails=[{**LATENCY, "metric": "mood"}])]}, "stages[0].guardrails[0]",
     "metrics registry"),
    ({"stages": []}, "stages", "From 1 to"),
])
def test_create__bad_input__refused_with_the_reason(catalog: Any, changes: dict[str, Any], field: str,
                                                    message: str) -> None:
    arguments = {"flag": flag(), "environment": environment("staging"), "baseline": BASELINE,
                 "candidate": CANDIDATE, "stages": [stage("a", ["internal_users"])], "actor": user("owner"),
                 **changes}
    with pytest.raises(ValidationError) as refused:
        design.plan_create(**arguments)
    assert message in " ".join(refused.value.message_dict[field])
    assert not RolloutPlan.objects.exists()


def test_create__second_open_plan_or_operator__refused(catalog: Any) -> None:
    template_plan()
    with pytest.raises(ValidationError, match="already has an open rollout plan"):
        template_plan()
    with pytest.raises(ValidationError, match="owner or editor"):
        design.plan_from_template(flag=flag(), environment=environment("production"), candidate=CANDIDATE,
                                 actor=user("operator"))


# --- the state machine ----------------------------------------------------------------------


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


# --- guardrails -----------------------------------------------------------------------------


@pytest.mark.parametrize(("guardrail", "candidate", "baseline", "status"), [
    (LATENCY, (300, 60), (100, 60), RED),
    (LATENCY, (110, 60), (100, 60), GREEN),
    (LATENCY, (300, 10), (100, 60), AMBER),
    (LATENCY, (300, 60), (100, 10), AMBER),
    ({"metric": "latency_p95", "kind": "absolute_max", "threshold": 250, "min_samples": 0}, (300, 1), (None, 0), RED),
    ({"metric": "latency_p95", "kind": "absolute_min", "threshold": 50, "min_samples": 0}, (60, 1), (None, 0), GREEN),
    ({"metric": "latency_p95", "kind": "relative_min", "threshold": 0.9, "min_samples": 5}, (80, 9), (100, 9), RED),
])
def test_guardrail__numbers__green_amber_red(guardrail: dict[str, Any], candidate: tuple, baseline: tuple,
                                             status: str) -> None:
    def variant(p95: float | None, count: int) -> dict[str, Any]:
        return {"exposures": count, "metrics": {"latency_p95": {"count": count, "p95": p95}}}

    result = evaluate_guardrail(guardrail, evidence={CANDIDATE: variant(*candidate), BASELINE: variant(*baseline)},
                                baseline=BASELINE, candidate=CANDIDATE, metric_kind="p95")
    assert result.status == status
    assert result.candidate_samples == candidate[1]


def post_latencies(key: str, variant: str, latency: float, units: int) -> None:
    events = []
    for i in range(units):
        unit = f"acct-{variant}-{i}"
        events.append({"kind": "exposure", "flag": PROFILE, "variant": variant, "served": variant, "unit": unit,
                       "time": (timezone.now() - datetime.timedelta(minutes=10)).isoformat()})
        events.append({"kind": "outcome", "metric": "latency_p95", "value": latency, "unit": unit,
                       "time": (timezone.now() - datetime.timedelta(minutes=9)).isoformat()})
    response = call("POST", "/api/v1/events", body={"batch_id": uuid.uuid4().hex, "events": events},
                    headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200 and response.json()["accepted"] == len(events), response.body


def running_with_latency(candidate_latency: float, **extra: Any) -> RolloutPlan:
    """A staging plan in its first stage for 30 minutes, with 60 baseline units at 100 ms and
    60 candidate units at `candidate_latency`, posted to the events API and aggregated."""
    plan = transitions.plan_start(plan=template_plan(**extra), reason="go", actor=user("owner"))
    plan = baked(plan, minutes=30)
    key = flag_services.sdk_key_create(environment=environment("staging"), name="tests", actor=TEST_ACTOR)[1]
    post_latencies(key, BASELINE, 100, 60)
    post_latencies(key, CANDIDATE, candidate_latency, 60)
    assert events_aggregate() == 240
    return plan


def test_guardrail_breach__check_pauses_records_and_notifies(catalog: Any, django_capture_on_commit_callbacks) -> None:
    # Given candidate latency three times the baseline's
    plan = running_with_latency(300)
    # Then advancing is refused with the reason, even after the bake time
    with pytest.raises(ValidationError, match=r"latency_p95: candidate 30\d.* breaches at most 11\d.* \(1.2 × baseline"):
        transitions.plan_advance(plan=baked(plan, minutes=61), reason="ship it", actor=user("owner"))
    # When the guardrail job runs
    with django_capture_on_commit_callbacks(execute=False):
        assert breaches.check_guardrails() == 1
    # Then the plan is paused by the system, with the breach and its evidence on record
    plan = fresh(plan)
    assert plan.status == "paused"
    breach, pause = ReleaseDecision.objects.filter(plan=plan).order_by("-id")[:2][::-1]
    assert (breach.action, breach.actor_label, pause.action, pause.actor_label) == (
        "breach", "system:guardrails", "pause", "system:guardrails")
    latency = next(g for g in breach.evidence["guardrails"] if g["metric"] == "latency_p95")
    assert latency["status"] == "red" and latency["candidate_samples"] == 60
    assert breach.evidence["variants"][CANDIDATE]["exposures"] == 60
    assert AuditEvent.objects.get(action="plan.breached").actor_label == "system:guardrails"
    assert AuditEvent.objects.get(action="plan.paused").actor_label == "system:guardrails"
    # and the owner and approvers are told
    assert set(Notification.objects.filter(kind="plan.breached").values_list("recipient__username", flat=True)) == {
        "owner", "pm", "lead"}
    # and a second run does nothing more
    assert check_guardrails_task() == 0


def test_guardrail_breach__plan_says_rollback__rolled_back(catalog: Any) -> None:
    plan = running_with_latency(300, on_breach="rollback")
    assert breaches.check_guardrails() == 1
    assert fresh(plan).status == "rolled_back"
    assert set(served("staging", ["acct-internal-001", "acct-beta-101"]).values()) == {BASELINE}


def test_guardrail_green__check_leaves_the_plan_running(catalog: Any) -> None:
    plan = running_with_latency(105)
    assert breaches.check_guardrails() == 0
    assert fresh(plan).status == "running"
    assert not ReleaseDecision.objects.filter(action="breach").exists()


# --- concurrency ----------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_races__two_advances_at_once__one_moves_the_plan() -> None:
    project, _ = seed_demo()
    seed_demo_metrics(project)
    plan = transitions.plan_start(plan=template_plan(), reason="go", actor=user("owner"))
    plan = baked(plan)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def advance() -> None:
        try:
            barrier.wait(timeout=10)
            transitions.plan_advance(plan=plan, reason="next", actor=user("owner"))
            outcomes.append("ok")
        except ValidationError:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=advance) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # The second waits on the row lock, then sees the fresh stage's bake time
    assert sorted(outcomes) == ["ok", "refused"]
    assert fresh(plan).stage_index == 1
    assert ReleaseDecision.objects.filter(plan=plan, action="advance").count() == 1
    assert AuditEvent.objects.filter(action="plan.advanced").count() == 1


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
