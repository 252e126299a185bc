"""Guardrails on a schedule (rollouts/plans/breaches.py), from real telemetry: a red guardrail
records the breach and pauses the plan (or rolls it back, as it says; paused instead when the
roll-back would need approval), as the system, and tells people; green leaves it running; one
plan failing does not stop the sweep."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from flags import services as flag_services
from notifications.models import Notification
from rollouts.models import ReleaseDecision, RolloutPlan
from rollouts.plans import breaches, design, transitions
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
    post_latencies,
    served,
    template_plan,
)
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db


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
    key = flag_services.sdk_key_create(environment=environment("production"), name="t", actor=TEST_ACTOR)[1]
    post_latencies(key, "fallback_human_review", 100, 60)
    post_latencies(key, CANDIDATE, 400, 60)
    events_aggregate()
    # When the guardrail sweep runs
    assert breaches.check_guardrails() == 1
    # Then the breach is recorded and the plan paused, since rolling back would have waited
    plan = fresh(plan)
    assert plan.status == "paused"
    breach, pause = ReleaseDecision.objects.filter(plan=plan, action__in=("breach", "pause")).order_by("id")
    assert "would need approval here, so the plan was paused instead" in pause.reason
    assert breach.actor_label == pause.actor_label == "system:guardrails"


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

