"""Guardrails on a schedule (rollouts/plans/breaches.py), from telemetry posted to the events API:
a red guardrail (its 95 % confidence sequence wholly beyond what it allows) records the breach
and stops the harm as the plan says, as the system, and tells people. By default the plan steps
back: from stage k > 0 traffic returns at once to stage k − 1 and the plan pauses there; from the
first stage it rolls back to the baseline. A plan may instead roll back or only pause. A move the
policy would hold for approval is never left waiting: the plan pauses instead. Green leaves the
plan running; one plan failing does not stop the sweep."""

from __future__ import annotations

import datetime
import logging
import re
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.models import AuditEvent
from flags import services as flag_services
from flags.models import Targeting
from notifications.models import Notification
from rollouts.models import ChangeRequest, ReleaseDecision, RolloutPlan
from rollouts.plans import breaches, design, measurement, transitions
from rollouts.tasks import check_guardrails as check_guardrails_task
from telemetry.services import events_aggregate
from tests.factories import TEST_ACTOR
from tests.rollouts.plans.support import (
    BASELINE,
    CANDIDATE,
    LATENCY_MIN_20,
    approve_and_apply,
    baked,
    environment,
    flag,
    fresh,
    make_plan,
    served,
    targeting,
    template_plan,
)
from tests.rollouts.plans.through_workers import case_events, post_events
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db

UNITS, OUTCOMES = 40, 12  # per variant: 480 latency outcomes, enough for a p95's confidence sequence
# How a breached latency guardrail reads, in words (rollouts/plans/guardrails.py)
BREACHED = re.compile(r"latency_p95 is worse by \d+ %–\d+ % than the baseline with 95 % confidence "
                      r"\(20 % worse allowed\): breached")
OTHERS = [f"acct-{i}" for i in range(2000)]  # accounts in no segment: only a split gives them the candidate


def report(env_key: str, latency: dict[str, float], *, units: int = UNITS, outcomes: int = OUTCOMES) -> None:
    """`units` accounts per variant, exposed ten minutes ago, each then reporting `outcomes`
    latencies from the variant's value to 4.5 % above it; posted to the events API and aggregated."""
    key = flag_services.sdk_key_create(environment=environment(env_key), name="tests", actor=TEST_ACTOR)[1]
    now = timezone.now()
    variants = {f"{variant}-unit-{i}": variant for variant in latency for i in range(units)}
    events, _ = case_events(variants, latency, outcomes=outcomes, exposed_at=now - datetime.timedelta(minutes=10),
                            reported_at=now - datetime.timedelta(minutes=9))
    post_events(key, events)
    assert events_aggregate() == len(events)


def running(env_key: str = "staging", stage_index: int = 0, **extra: Any) -> RolloutPlan:
    """A template plan started and advanced to `stage_index` (each step applied at once, or
    approved and applied), in that stage for the last 30 minutes."""
    plan = transitions.plan_start(plan=template_plan(env_key, **extra), reason="go", actor=user("owner"))
    for _ in range(stage_index):
        plan = transitions.plan_advance(plan=baked(plan), reason="next", actor=user("owner"))
        if plan.pending_change_request_id:
            approve_and_apply(plan.pending_change_request)
            plan = transitions.plan_sync(plan)
    assert (plan.status, plan.stage_index, plan.pending_change_request_id) == ("running", stage_index, None)
    return baked(plan, minutes=30)


def told(kind: str = "plan.breached") -> tuple[set[str], set[str]]:
    """Who was told, and the titles they read."""
    rows = Notification.objects.filter(kind=kind)
    return set(rows.values_list("recipient__username", flat=True)), set(rows.values_list("title", flat=True))


def latency_of(decision: ReleaseDecision) -> dict[str, Any]:
    return next(g for g in decision.evidence["guardrails"] if g["metric"] == "latency_p95")


def latency_now(plan: RolloutPlan) -> dict[str, Any]:
    return next(g for g in measurement.plan_evidence(plan)["guardrails"] if g["metric"] == "latency_p95")


# --- stepping back (the default) ---------------------------------------------------------------


def test_breach__step_back_from_the_5_percent_stage__beta_stage_traffic_at_once_and_paused(catalog: Any) -> None:
    # Given a staging plan made with the defaults, in its third stage (5 % of everyone else)
    plan = running("staging", stage_index=2)
    assert plan.on_breach == "step_back"
    before = served("staging", ["acct-internal-001", "acct-beta-101", *OTHERS])
    in_split = sorted(unit for unit in OTHERS if before[unit] == CANDIDATE)
    assert in_split and before["acct-internal-001"] == before["acct-beta-101"] == CANDIDATE
    # and its candidate three times as slow as the baseline
    report("staging", {BASELINE: 100.0, CANDIDATE: 300.0})
    # Then advancing is refused with the guardrail's verdict in words, even after the bake time
    with pytest.raises(ValidationError, match=r"A guardrail of stage 3 \(5 % of eligible traffic\) is breached: "
                                              + BREACHED.pattern):
        transitions.plan_advance(plan=baked(plan, minutes=60 * 25), reason="ship it", actor=user("owner"))
    # When the guardrail job runs
    entered = fresh(plan).stage_entered_at
    assert breaches.check_guardrails() == 1
    # Then the plan is back in stage 2 (Beta accounts), paused there for a person to decide
    plan = fresh(plan)
    assert (plan.status, plan.stage_index) == ("paused", 1) and plan.stage_entered_at > entered
    # and traffic is stage 2's at once: the split is gone, the segments keep the candidate
    rules = targeting("staging").rules
    assert (rules[0]["id"], rules[0]["clauses"], rules[0]["serve"]) == (
        f"plan-{plan.pk}", [{"op": "in_segment", "values": ["beta_accounts", "internal_users"]}],
        {"variation": CANDIDATE})
    assert [rule["id"] for rule in rules[1:]] == ["internal", "beta-50"]  # the flag's own rules stay
    assert targeting("staging").default_serve == {"variation": BASELINE}
    after = served("staging", ["acct-internal-001", "acct-beta-101", *in_split])
    assert {unit: after[unit] for unit in in_split} == dict.fromkeys(in_split, BASELINE)
    assert after["acct-internal-001"] == after["acct-beta-101"] == CANDIDATE
    # and the log holds the breach, then the step back, with the evidence that decided it
    breach, step_back = ReleaseDecision.objects.filter(plan=plan).order_by("-id")[:2][::-1]
    assert (breach.action, breach.actor_id, breach.actor_label) == ("breach", None, "system:guardrails")
    assert (step_back.action, step_back.actor_label, step_back.from_stage, step_back.to_stage) == (
        "step_back", "system:guardrails", 2, 1)
    assert BREACHED.search(breach.reason) and step_back.reason == breach.reason
    latency = latency_of(step_back)
    assert latency["status"] == "red" and latency["candidate_samples"] == latency["baseline_samples"] == UNITS * OUTCOMES
    # the true ratio of the p95s is 3 (the same spread in both variants): 2 worse, inside the interval
    assert 0.2 < latency["interval_low"] <= 2.0 <= latency["interval_high"]
    # and audit rows by the system: the breach, the step back (before and after), the targeting change
    assert AuditEvent.objects.get(action="plan.breached").actor_label == "system:guardrails"
    row = AuditEvent.objects.get(action="plan.stepped_back")
    assert (row.actor_id, row.actor_label, row.reason) == (None, "system:guardrails", breach.reason)
    assert (row.before["status"], row.before["stage_index"], row.after["status"], row.after["stage_index"]) == (
        "running", 2, "paused", 1)
    assert row.summary.endswith("from stage 3 (5 % of eligible traffic) to stage 2 (Beta accounts) and paused there")
    change = AuditEvent.objects.filter(action="targeting.updated", flag_id=flag().pk).latest("id")
    assert change.actor_label == "system:guardrails" and "stepped back to stage 2 (Beta accounts)" in change.reason
    assert not ChangeRequest.objects.filter(flag=flag()).exists()
    # and the owner and the approvers are told what happened
    recipients, titles = told()
    assert recipients == {"owner", "pm", "lead"}
    assert titles == {"Guardrail breach: support_assistant_profile in Staging stepped back to stage 2 (Beta accounts)"}
    # and the next sweeps leave the paused plan alone
    assert check_guardrails_task() == 0
    assert list(ReleaseDecision.objects.filter(plan=plan).order_by("id").values_list("action", flat=True)) == [
        "start", "advance", "advance", "breach", "step_back"]
    # When a person resumes it, it runs again at stage 2 with a fresh window: the data that caused the
    # breach no longer counts
    resumed = transitions.plan_resume(plan=plan, reason="fixed the reranker", actor=user("owner"))
    assert (resumed.status, resumed.stage_index) == ("running", 1)
    assert latency_now(resumed)["candidate_samples"] == 0


def test_breach__step_back_from_the_first_stage__rolled_back_to_the_baseline(catalog: Any) -> None:
    # Given a staging plan with the defaults in its first stage, its candidate three times as slow
    plan = running("staging")
    assert served("staging", ["acct-internal-001"]) == {"acct-internal-001": CANDIDATE}
    report("staging", {BASELINE: 100.0, CANDIDATE: 300.0})
    # When the guardrail job runs
    assert breaches.check_guardrails() == 1
    # Then there is no earlier stage: everyone gets the baseline, the plan is rolled back
    plan = fresh(plan)
    assert (plan.status, plan.stage_index) == ("rolled_back", 0)
    assert set(served("staging", ["acct-internal-001", "acct-beta-101", *OTHERS[:200]]).values()) == {BASELINE}
    breach, rollback = ReleaseDecision.objects.filter(plan=plan).exclude(action="start").order_by("id")
    assert (breach.action, rollback.action, rollback.actor_label) == ("breach", "rollback", "system:guardrails")
    assert AuditEvent.objects.get(action="plan.rolled_back").actor_label == "system:guardrails"
    assert not AuditEvent.objects.filter(action="plan.stepped_back").exists()
    recipients, titles = told()
    assert recipients == {"owner", "pm", "lead"}
    assert titles == {"Guardrail breach: support_assistant_profile in Staging rolled back to baseline_v3"}


def test_breach__step_back_in_production__applies_at_once_without_approval(catalog: Any) -> None:
    # Given a production plan (governed: each widening was approved) in its 5 % stage
    plan = running("production", stage_index=2)
    requests = ChangeRequest.objects.count()
    report("production", {BASELINE: 100.0, CANDIDATE: 300.0})
    # When the guardrail job runs
    assert breaches.check_guardrails() == 1
    # Then lowering the split back to the beta stage is a de-escalation: it applied at once
    plan = fresh(plan)
    assert (plan.status, plan.stage_index) == ("paused", 1)
    assert ChangeRequest.objects.count() == requests
    assert set(served("production", OTHERS[:500]).values()) == {BASELINE}
    assert served("production", ["acct-beta-101"]) == {"acct-beta-101": CANDIDATE}
    assert ReleaseDecision.objects.filter(plan=plan).latest("id").action == "step_back"


def test_breach__step_back_would_need_approval__paused_where_it_is_and_people_told(catalog: Any) -> None:
    # Given a production plan that gave beta accounts the candidate first, then internal users too.
    # Returning to beta accounts alone rewrites the plan's rule to serve them all the candidate,
    # where the flag's own rule for them serves it to 5 %: the policy counts that as a widening
    stages = [{"name": name, "segments": segments, "percentage": 0, "min_bake_minutes": 0,
               "guardrails": [LATENCY_MIN_20]}
              for name, segments in (("Beta accounts", ["beta_accounts"]),
                                     ("Beta and internal", ["beta_accounts", "internal_users"]))]
    plan = design.plan_create(flag=flag(), environment=environment("production"), baseline=BASELINE,
                             candidate=CANDIDATE, stages=stages, actor=user("owner"), reason="beta first")
    plan = transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    approve_and_apply(plan.pending_change_request)
    plan = transitions.plan_advance(plan=transitions.plan_sync(plan), reason="internal too", actor=user("owner"))
    if plan.pending_change_request_id:
        approve_and_apply(plan.pending_change_request)
        plan = transitions.plan_sync(plan)
    plan = baked(plan, minutes=30)
    assert (plan.status, plan.stage_index) == ("running", 1)
    version, requests = targeting("production").version, ChangeRequest.objects.count()
    report("production", {BASELINE: 100.0, CANDIDATE: 300.0})
    # When the guardrail job runs
    assert breaches.check_guardrails() == 1
    # Then nothing waits for approval: the plan is paused where it is, and says why
    plan = fresh(plan)
    assert (plan.status, plan.stage_index) == ("paused", 1)
    assert (targeting("production").version, ChangeRequest.objects.count()) == (version, requests)
    breach, pause = ReleaseDecision.objects.filter(plan=plan, action__in=("breach", "pause", "step_back")).order_by("id")
    assert (breach.action, pause.action, pause.actor_label) == ("breach", "pause", "system:guardrails")
    assert pause.reason == (f"{breach.reason}. Returning to stage 1 (Beta accounts) would need approval here, so "
                            "the plan was paused instead.")
    assert not AuditEvent.objects.filter(action="plan.stepped_back").exists()
    assert AuditEvent.objects.get(action="plan.paused").reason == pause.reason
    recipients, titles = told()
    assert recipients == {"owner", "pm", "lead"}
    assert titles == {"Guardrail breach: support_assistant_profile in Production paused at stage 2"}


def test_breach__flag_off_behind_the_plan__paused_and_the_flag_stays_off(catalog: Any) -> None:
    # Given a plan in its second stage whose flag was turned off behind its back (the kill switch
    # pauses plans in its own transaction; this is the race it could lose)
    plan = running("staging", stage_index=1)
    report("staging", {BASELINE: 100.0, CANDIDATE: 300.0})
    Targeting.objects.filter(pk=targeting("staging").pk).update(enabled=False)
    version = targeting("staging").version
    # When the guardrail job runs
    assert breaches.check_guardrails() == 1
    # Then stepping back would have turned the flag on: the plan is paused instead, the flag stays off
    plan = fresh(plan)
    assert (plan.status, plan.stage_index) == ("paused", 1)
    assert (targeting("staging").enabled, targeting("staging").version) == (False, version)
    pause = ReleaseDecision.objects.filter(plan=plan).latest("id")
    assert pause.action == "pause" and pause.reason.endswith(
        "support_assistant_profile is off in Staging: stepping back would turn it on; a rollout plan never turns a "
        "flag on, so the plan was paused instead.")


# --- rolling back, pausing -----------------------------------------------------------------------


def test_breach__plan_says_pause__paused_with_the_evidence_traffic_unchanged(catalog: Any,
                                                                             django_capture_on_commit_callbacks) -> None:
    # Given a plan that pauses on a breach, its candidate three times as slow
    plan = running("staging", on_breach="pause")
    version = targeting("staging").version
    report("staging", {BASELINE: 100.0, CANDIDATE: 300.0})
    # When the guardrail job runs
    with django_capture_on_commit_callbacks(execute=False):
        assert breaches.check_guardrails() == 1
    # Then the plan is paused by the system, with the breach and its evidence on record
    plan = fresh(plan)
    assert (plan.status, plan.stage_index) == ("paused", 0)
    breach, pause = ReleaseDecision.objects.filter(plan=plan).order_by("-id")[:2][::-1]
    assert (breach.action, breach.actor_label, pause.action, pause.actor_label) == (
        "breach", "system:guardrails", "pause", "system:guardrails")
    assert latency_of(breach)["status"] == "red" and breach.evidence["variants"][CANDIDATE]["exposures"] == UNITS
    assert AuditEvent.objects.get(action="plan.breached").actor_label == "system:guardrails"
    assert AuditEvent.objects.get(action="plan.paused").actor_label == "system:guardrails"
    # and traffic stays as it was
    assert targeting("staging").version == version
    recipients, titles = told()
    assert recipients == {"owner", "pm", "lead"}
    assert titles == {"Guardrail breach: support_assistant_profile in Staging paused at stage 1"}
    # and a second run does nothing more
    assert check_guardrails_task() == 0


def test_breach__plan_says_rollback__everyone_back_to_the_baseline(catalog: Any) -> None:
    plan = running("staging", stage_index=2, on_breach="rollback")
    report("staging", {BASELINE: 100.0, CANDIDATE: 300.0})
    assert breaches.check_guardrails() == 1
    assert fresh(plan).status == "rolled_back"
    assert set(served("staging", ["acct-internal-001", "acct-beta-101", *OTHERS[:500]]).values()) == {BASELINE}
    assert told()[1] == {"Guardrail breach: support_assistant_profile in Staging rolled back to baseline_v3"}


def test_breach__rollback_would_need_approval__plan_paused_instead_and_people_told(catalog: Any) -> None:
    # Given a production plan whose baseline is not the flag's fallback and that rolls back on a breach
    stages = [{"name": "Internal", "segments": ["internal_users"], "percentage": 0, "min_bake_minutes": 0,
               "guardrails": [LATENCY_MIN_20]}]
    plan = design.plan_create(flag=flag(), environment=environment("production"), baseline="fallback_human_review",
                             candidate=CANDIDATE, stages=stages, actor=user("owner"), reason="x",
                             on_breach="rollback")
    plan = transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    if plan.pending_change_request_id:
        approve_and_apply(plan.pending_change_request)
        plan = transitions.plan_sync(plan)
    plan = baked(plan, minutes=30)
    report("production", {"fallback_human_review": 100.0, CANDIDATE: 400.0})
    # When the guardrail sweep runs
    assert breaches.check_guardrails() == 1
    # Then the breach is recorded and the plan paused, since rolling back would have waited
    plan = fresh(plan)
    assert plan.status == "paused"
    breach, pause = ReleaseDecision.objects.filter(plan=plan, action__in=("breach", "pause")).order_by("id")
    assert pause.reason == (f"{breach.reason}. Rolling back to fallback_human_review would need approval here, so "
                            "the plan was paused instead.")
    assert breach.actor_label == pause.actor_label == "system:guardrails"
    assert told()[0] == {"owner", "pm", "lead"}


# --- no breach ------------------------------------------------------------------------------------


def test_guardrail_green__check_leaves_the_plan_running(catalog: Any) -> None:
    # Given a candidate 5 % slower than the baseline, where 20 % is allowed
    plan = running("staging")
    report("staging", {BASELINE: 100.0, CANDIDATE: 105.0})
    # When the guardrail job runs, then the plan runs on: the whole interval is within what is allowed
    assert breaches.check_guardrails() == 0
    assert fresh(plan).status == "running"
    assert latency_now(plan)["status"] == "green"
    assert not ReleaseDecision.objects.filter(action__in=("breach", "pause", "step_back", "rollback")).exists()


def test_guardrail_regression_with_few_samples__amber__not_a_breach(catalog: Any) -> None:
    # Given a candidate three times as slow, but only 60 outcomes per variant: a p95's confidence
    # sequence cannot tell yet (its upper end is unbounded with so few samples)
    plan = running("staging")
    report("staging", {BASELINE: 100.0, CANDIDATE: 300.0}, units=60, outcomes=1)
    # When the guardrail job runs, then nothing happens yet
    assert breaches.check_guardrails() == 0
    assert fresh(plan).status == "running"
    assert latency_now(plan)["status"] == "amber"


def test_sweep__one_plan_failing__the_others_are_still_checked(catalog: Any, caplog: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = make_plan("staging"), make_plan("development")
    for plan in (first, second):
        transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    checked = []
    real = breaches.plan_guardrails_check

    def check(*, plan: RolloutPlan) -> bool:
        if plan.pk == first.pk:
            raise RuntimeError("broken evidence")
        checked.append(plan.pk)
        return real(plan=plan)

    monkeypatch.setattr(breaches, "plan_guardrails_check", check)
    with caplog.at_level(logging.ERROR, logger="rollouts.plans"):
        breaches.check_guardrails()
    assert checked == [second.pk]
    assert any(f"rollout plan {first.pk} failed" in r.getMessage() for r in caplog.records)
