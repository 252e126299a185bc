"""A broken split pauses the plan (rollouts/plans/breaches.py, measurement.sample_ratio_check): a
stage serving the candidate to 50 % of everyone, whose application loses the exposures of 40 %
of the candidate's units, fails the sample-ratio test; the sweep pauses the plan without
changing traffic and says why, and no guardrail verdict on that evidence counts as a breach;
advancing and promoting are refused meanwhile. A split reported whole is not flagged."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from audit.models import AuditEvent
from flags import services as flag_services
from notifications.models import Notification
from rollouts.models import ReleaseDecision, RolloutPlan
from rollouts.plans import breaches, design, measurement, transitions
from telemetry.services import events_aggregate
from tests.factories import TEST_ACTOR
from tests.rollouts.plans.support import (
    BASELINE,
    CANDIDATE,
    LATENCY_MIN_20,
    baked,
    environment,
    flag,
    fresh,
    served,
    targeting,
)
from tests.rollouts.plans.through_workers import case_events, post_events
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db

ACCOUNTS = [f"acct-{i}" for i in range(600)]  # in no segment: the split alone decides what they get
STAGES = [{"name": "Half of everyone", "segments": [], "percentage": 50_000, "min_bake_minutes": 0,
           "guardrails": [LATENCY_MIN_20]},
          {"name": "Everyone", "segments": [], "percentage": 100_000, "min_bake_minutes": 0,
           "guardrails": [LATENCY_MIN_20]}]


def half_split_plan() -> RolloutPlan:
    """A staging plan in its 50 % stage for the last 30 minutes."""
    plan = design.plan_create(flag=flag(), environment=environment("staging"), baseline=BASELINE, candidate=CANDIDATE,
                             stages=STAGES, actor=user("owner"), reason="Half, then everyone")
    plan = transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    return baked(plan, minutes=30)


def report(variants: dict[str, str], latency: dict[str, float]) -> None:
    """What the application reports: one exposure per unit as served ten minutes ago, then three
    latencies per unit; posted to the events API and aggregated."""
    key = flag_services.sdk_key_create(environment=environment("staging"), name="tests", actor=TEST_ACTOR)[1]
    now = timezone.now()
    events, _ = case_events(variants, latency, outcomes=3, exposed_at=now - datetime.timedelta(minutes=10),
                            reported_at=now - datetime.timedelta(minutes=9))
    post_events(key, events)
    assert events_aggregate() == len(events)


def sides() -> dict[str, list[str]]:
    """The accounts on each side of the split: what the engine serves them now."""
    answers = served("staging", ACCOUNTS)
    return {variant: sorted(unit for unit, got in answers.items() if got == variant) for variant in (BASELINE, CANDIDATE)}


def broken_split(latency: dict[str, float]) -> tuple[int, int]:
    """Every baseline-side account reports; only the first 60 % of the candidate-side accounts do
    (the candidate loses the exposures of the others). Returns (candidate-side reported, all reported)."""
    side = sides()
    assert len(side[BASELINE]) > 200 and len(side[CANDIDATE]) > 200  # a split of several hundred accounts
    kept = side[CANDIDATE][:len(side[CANDIDATE]) * 6 // 10]
    report({**dict.fromkeys(side[BASELINE], BASELINE), **dict.fromkeys(kept, CANDIDATE)}, latency)
    return len(kept), len(kept) + len(side[BASELINE])


def test_broken_split__sweep_pauses_with_the_mismatch_and_no_breach(catalog: Any) -> None:
    # Given a plan serving the candidate to half of everyone, and an application that loses 40 % of
    # the candidate's exposures, while the candidate's latency looks three times the baseline's
    plan = half_split_plan()
    version = targeting("staging").version
    on_candidate_side, units = broken_split({BASELINE: 100.0, CANDIDATE: 300.0})
    # When the guardrail job runs
    assert breaches.check_guardrails() == 0  # not a breach
    # Then the plan is paused where it is, by the system, with the mismatch as its reason
    plan = fresh(plan)
    assert (plan.status, plan.stage_index) == ("paused", 0)
    assert targeting("staging").version == version
    pause = ReleaseDecision.objects.filter(plan=plan).latest("id")
    assert (pause.action, pause.actor_label) == ("pause", "system:guardrails")
    share = 100 * on_candidate_side / units
    assert pause.reason.startswith(f"Sample ratio mismatch: {on_candidate_side} of {units} units ({share:.1f} %) fall "
                                   f"in {CANDIDATE}'s 50.0 % of the split (p = ")
    assert pause.reason.endswith("sample ratio mismatch — units are being lost or counted twice on one side, so this "
                                 "stage's evidence cannot be trusted")
    # and its evidence says so: the latency guardrail is red on it, but that is not believed
    evidence = pause.evidence
    assert evidence["untrustworthy"] is True and evidence["status"] == "amber"
    assert evidence["sample_ratio"]["mismatch"] is True and evidence["sample_ratio"]["p_value"] < 0.001
    assert evidence["sample_ratio"]["observed"] == {BASELINE: units - on_candidate_side, CANDIDATE: on_candidate_side}
    assert evidence["guardrails"][0]["status"] == "red"
    assert not ReleaseDecision.objects.filter(plan=plan, action__in=("breach", "step_back", "rollback")).exists()
    assert not AuditEvent.objects.filter(action__in=("plan.breached", "plan.stepped_back")).exists()
    row = AuditEvent.objects.get(action="plan.paused")
    assert (row.actor_label, row.reason) == ("system:guardrails", pause.reason)
    # and the owner and the approvers are told why
    notes = Notification.objects.filter(kind="plan.sample_ratio")
    assert set(notes.values_list("recipient__username", flat=True)) == {"owner", "pm", "lead"}
    assert set(notes.values_list("title", flat=True)) == {
        "Sample ratio mismatch: support_assistant_profile in Staging paused at stage 1 (Half of everyone)"}
    assert not Notification.objects.filter(kind="plan.breached").exists()


def test_broken_split__advancing_and_promoting_refused_while_untrustworthy(catalog: Any) -> None:
    # Given the broken split, with latencies alike in both variants (no guardrail against it)
    plan = half_split_plan()
    broken_split({BASELINE: 100.0, CANDIDATE: 100.0})
    assert measurement.plan_evidence(plan)["guardrails"][0]["status"] != "red"
    # When the owner advances or promotes, then each is refused with the mismatch
    for step in (transitions.plan_advance, transitions.plan_promote):
        with pytest.raises(ValidationError, match=r"Sample ratio mismatch in stage 1 \(Half of everyone\): \d+ of "
                                                  r"\d+ units .* sample ratio mismatch"):
            step(plan=plan, reason="looks fine", actor=user("owner"))
    # and nothing moved
    assert (fresh(plan).status, fresh(plan).stage_index) == ("running", 0)
    assert list(ReleaseDecision.objects.filter(plan=plan).values_list("action", flat=True)) == ["start"]


def test_split_reported_whole__not_flagged__plan_runs_and_advances(catalog: Any) -> None:
    # Given the same split, with every account's exposure reported
    plan = half_split_plan()
    side = sides()
    report({**dict.fromkeys(side[BASELINE], BASELINE), **dict.fromkeys(side[CANDIDATE], CANDIDATE)},
           {BASELINE: 100.0, CANDIDATE: 100.0})
    # When the guardrail job runs, then the split is as configured and the plan runs on
    assert breaches.check_guardrails() == 0
    plan = fresh(plan)
    assert plan.status == "running"
    evidence = measurement.plan_evidence(plan)
    assert evidence["untrustworthy"] is False and evidence["sample_ratio"]["mismatch"] is False
    assert evidence["sample_ratio"]["observed"] == {BASELINE: len(side[BASELINE]), CANDIDATE: len(side[CANDIDATE])}
    assert evidence["sample_ratio"]["message"].endswith("the split looks as configured")
    assert not Notification.objects.filter(kind="plan.sample_ratio").exists()
    # and advancing is allowed
    assert transitions.plan_advance(plan=plan, reason="split healthy", actor=user("owner")).stage_index == 1
