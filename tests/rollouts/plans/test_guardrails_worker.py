"""A guardrail breach through the real machinery: events posted to the events API, and a
Celery worker with embedded beat, in its own process, on the configured broker, that
aggregates them and runs the guardrail sweep on its own schedule. Nothing here calls the
aggregation or the check. The breaching plan, which says to pause on a breach, is paused by
the system with its evidence, audit rows and notifications, and keeps serving what its stage
served; a green plan judged in the same sweeps keeps running. (Stepping back and rolling back
on a breach, the default: test_breach_step_back_worker.py.)"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from django.utils import timezone

from audit.constants import ActorKind
from audit.models import AuditEvent
from audit.services import SystemActor
from flags import services as flag_services
from flags.constants import Role
from flags.demo import DEMO_USERS, seed_demo
from flags.models import Environment, Flag, Targeting
from notifications.models import Notification
from rollouts.models import ReleaseDecision, RolloutPlan
from rollouts.plans import measurement
from telemetry.demo import seed_demo_metrics
from tests.rollouts.plans.through_workers import (
    BASELINE,
    CANDIDATE,
    MIN_SAMPLES,
    PROFILE,
    post_cases,
    served,
    started_plan,
    sweeping_workers,
    units_by_variant,
)
from tests.workers import require_broker


def within(value: float, low: float, high: float) -> bool:
    """The aggregates' p95 comes from log-scale histograms, exact to 1 %."""
    return low * 0.99 <= value <= high * 1.01


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_guardrails__worker_aggregates_and_sweeps__red_plan_paused_green_plan_running(tmp_path: Path) -> None:
    require_broker()
    # Given the demo, committed, and two plans at their first stage that pause on a breach: a
    # green one in staging (made first, so each sweep judges it before the other) and one in production
    project, _ = seed_demo()
    seed_demo_metrics(project)
    green, red = started_plan("staging", on_breach="pause"), started_plan("production", on_breach="pause")
    # entered two minutes ago, so the events below (seconds old) fall inside the stages' windows
    # whatever the clock (a window starts at the minute its stage was entered)
    RolloutPlan.objects.filter(pk__in=(green.pk, red.pk)).update(
        stage_entered_at=timezone.now() - datetime.timedelta(minutes=2))
    keys = {env_key: flag_services.sdk_key_create(
        environment=Environment.objects.get(project=project, key=env_key), name="tests",
        actor=SystemActor("tests"))[1] for env_key in ("staging", "production")}
    before = {env_key: served(key) for env_key, key in keys.items()}
    versions = dict(Targeting.objects.filter(flag__key=PROFILE).values_list("environment__key", "version"))
    assert {v for account, v in before["production"].items() if account.startswith("acct-agent-")} == {CANDIDATE}
    # and the applications report what was served, twenty requests per account: in production
    # the candidate takes twice the baseline's latency, in staging the same
    sent = post_cases(keys["production"], before["production"], {BASELINE: 400.0, CANDIDATE: 800.0})
    post_cases(keys["staging"], before["staging"], {BASELINE: 400.0, CANDIDATE: 400.0})
    # When a worker with beat runs (aggregation every 2 s, the guardrail sweep every 5 s)
    # (each queue with a worker of its own, as deployed; beat beside the safety worker)
    output = sweeping_workers(tmp_path, "guardrails",
                              still_running=lambda: RolloutPlan.objects.get(pk=red.pk).status == "running")
    # Then the production plan was paused by the system, after recording the breach
    red, green = RolloutPlan.objects.get(pk=red.pk), RolloutPlan.objects.get(pk=green.pk)
    assert red.status == "paused", output[-3000:]
    breach, pause = ReleaseDecision.objects.filter(plan=red).exclude(action="start").order_by("id")
    assert (breach.action, breach.actor_id, breach.actor_label) == ("breach", None, "system:guardrails")
    assert (pause.action, pause.actor_label, pause.from_stage, pause.to_stage) == ("pause", "system:guardrails", 0, 0)
    assert pause.reason == breach.reason
    assert breach.reason.startswith("Guardrail breached: latency_p95 is worse by ")
    assert breach.reason.endswith("than the baseline with 95 % confidence (20 % worse allowed): breached")
    # with the numbers that decided it: the p95s of what was sent, and the limit 1.2 × baseline
    (latency,) = breach.evidence["guardrails"]
    assert (latency["metric"], latency["status"]) == ("latency_p95", "red")
    assert (latency["candidate_samples"], latency["baseline_samples"]) == (len(sent[CANDIDATE]), len(sent[BASELINE]))
    assert within(latency["candidate_value"], min(sent[CANDIDATE]), max(sent[CANDIDATE]))
    assert within(latency["baseline_value"], min(sent[BASELINE]), max(sent[BASELINE]))
    assert latency["limit"] == pytest.approx(1.2 * latency["baseline_value"])
    assert latency["candidate_value"] > latency["limit"]
    # and the 95 % confidence sequence on candidate / baseline - 1: wholly above the 20 % allowed,
    # around the true ratio of the p95s sent (800 / 400, the same spread in both: 1 worse)
    assert latency["allowed"] == pytest.approx(0.2) and latency["interval_low"] > 0.2
    assert latency["interval_low"] <= 1.0 <= latency["interval_high"]
    assert breach.evidence["variants"][CANDIDATE]["exposures"] == len(units_by_variant(before["production"])[CANDIDATE])
    assert breach.evidence["status"] == "red"
    # and its audit rows name the system actor
    for action in ("plan.breached", "plan.paused"):
        row = AuditEvent.objects.get(action=action, target_id=str(red.pk))
        assert (row.actor_id, row.actor_kind, row.actor_label) == (None, ActorKind.SYSTEM, "system:guardrails")
        assert "latency_p95" in row.reason
    # and the flag owner and every approver were told, once
    approvers = {demo.username for demo in DEMO_USERS if Role.APPROVER in demo.roles}
    told = list(Notification.objects.filter(kind="plan.breached").values_list("recipient__username", flat=True))
    assert sorted(told) == sorted({Flag.objects.get(key=PROFILE).owner_user.username} | approvers)
    assert all("paused" in title for title in Notification.objects.filter(kind="plan.breached")
               .values_list("title", flat=True))
    # and a pause changes no traffic: OFREP serves what the stage served
    assert dict(Targeting.objects.filter(flag__key=PROFILE).values_list("environment__key", "version")) == versions
    assert served(keys["production"]) == before["production"]
    # and the staging plan, green in the same sweeps with enough samples, keeps running
    assert green.status == "running"
    assert not ReleaseDecision.objects.filter(plan=green).exclude(action="start").exists()
    (judged,) = measurement.plan_evidence(green)["guardrails"]
    assert judged["status"] == "green" and judged["candidate_samples"] >= MIN_SAMPLES, judged
    assert served(keys["staging"]) == before["staging"]
