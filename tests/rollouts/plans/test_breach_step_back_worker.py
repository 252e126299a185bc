"""A breach stops harm, through the real machinery: events posted to the events API, and Celery
workers with embedded beat, in their own processes, on the configured broker, that aggregate them
and run the guardrail sweep on their own schedule. Nothing here calls the aggregation or the
check. Two plans make the default choice on a breach (step back):
- in staging, a plan in its second stage (internal users and half of everyone else) returns to
  its first stage: the accounts the split gave the candidate get the baseline again over OFREP,
  and the plan waits, paused, for a person;
- in production, a plan in its first stage has nowhere earlier to go: it rolls back, and every
  account that got the candidate gets the baseline over OFREP.
Each with its decisions, audit rows by the system, and the owner and approvers told."""

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
from flags.models import Environment, Flag
from notifications.models import Notification
from rollouts.models import ReleaseDecision, RolloutPlan
from rollouts.plans import transitions
from telemetry.demo import seed_demo_metrics
from tests.rollouts.plans.through_workers import (
    AGENTS,
    BASELINE,
    CANDIDATE,
    LATENCY,
    ORDINARY,
    PROFILE,
    STAGES,
    post_cases,
    served,
    started_plan,
    sweeping_workers,
)
from tests.rollouts.support import user
from tests.workers import require_broker

HALF = [STAGES[0], {"name": "Half of everyone", "segments": ["internal_users"], "percentage": 50_000,
                    "min_bake_minutes": 0, "guardrails": [LATENCY]}]


def decisions(plan: RolloutPlan) -> list[ReleaseDecision]:
    return list(ReleaseDecision.objects.filter(plan=plan).exclude(action__in=("start", "advance")).order_by("id"))


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_breach__worker_sweep__steps_back_and_rolls_back__ofrep_serves_the_baseline_to_the_exposed(
        tmp_path: Path) -> None:
    require_broker()
    # Given the demo, committed; a staging plan advanced to half of everyone, and a production plan
    # in its first stage, both made with the defaults (step back on a breach)
    project, _ = seed_demo()
    seed_demo_metrics(project)
    stepping = transitions.plan_advance(plan=started_plan("staging", stages=HALF), reason="half",
                                        actor=user("owner"))
    rolling = started_plan("production")
    assert (stepping.on_breach, rolling.on_breach, stepping.stage_index) == ("step_back", "step_back", 1)
    # entered two minutes ago, so the events below (seconds old) fall inside the stages' windows
    RolloutPlan.objects.filter(pk__in=(stepping.pk, rolling.pk)).update(
        stage_entered_at=timezone.now() - datetime.timedelta(minutes=2))
    keys = {env_key: flag_services.sdk_key_create(
        environment=Environment.objects.get(project=project, key=env_key), name="tests",
        actor=SystemActor("tests"))[1] for env_key in ("staging", "production")}
    before = {env_key: served(key) for env_key, key in keys.items()}
    agents = {context["accountId"] for context in AGENTS}
    split_gave = {context["accountId"] for context in ORDINARY if before["staging"][context["accountId"]] == CANDIDATE}
    # (OFREP serves the candidate to the internal agents in both, and to about half of the others in staging)
    assert {before[env_key][agent] for env_key in before for agent in agents} == {CANDIDATE}
    assert 15 <= len(split_gave) <= 45
    assert {before["production"][c["accountId"]] for c in ORDINARY} == {BASELINE}
    # and the applications report what was served, twenty requests per account: the candidate
    # takes twice the baseline's latency in both
    for env_key, key in keys.items():
        post_cases(key, before[env_key], {BASELINE: 400.0, CANDIDATE: 800.0})
    # When workers run as deployed, one per queue, beat beside the safety worker (aggregation every
    # 2 s, the guardrail sweep every 5 s)
    output = sweeping_workers(tmp_path, "breach", still_running=lambda: RolloutPlan.objects.filter(
        pk__in=(stepping.pk, rolling.pk), status="running").exists())
    stepping, rolling = RolloutPlan.objects.get(pk=stepping.pk), RolloutPlan.objects.get(pk=rolling.pk)

    # Then the staging plan is back in its first stage, paused there
    assert (stepping.status, stepping.stage_index) == ("paused", 0), output[-3000:]
    # and OFREP serves the baseline to the accounts the split had given the candidate; the internal
    # agents keep it, as the first stage says; nobody else changed
    after = served(keys["staging"])
    assert {account: after[account] for account in split_gave} == dict.fromkeys(split_gave, BASELINE)
    assert {after[agent] for agent in agents} == {CANDIDATE}
    assert {a: v for a, v in after.items() if a not in split_gave} == {
        a: v for a, v in before["staging"].items() if a not in split_gave}
    # and its log holds the breach, then the step back, by the system, with the evidence
    breach, step_back = decisions(stepping)
    assert (breach.action, breach.actor_id, breach.actor_label) == ("breach", None, "system:guardrails")
    assert (step_back.action, step_back.actor_label, step_back.from_stage, step_back.to_stage) == (
        "step_back", "system:guardrails", 1, 0)
    assert step_back.reason == breach.reason and breach.reason.startswith("Guardrail breached: latency_p95 is worse by")
    (latency,) = step_back.evidence["guardrails"]
    assert latency["status"] == "red" and latency["interval_low"] > 0.2
    assert step_back.evidence["untrustworthy"] is False  # every account's exposure was reported

    # And the production plan had no earlier stage: it rolled back
    assert rolling.status == "rolled_back", output[-3000:]
    # and OFREP serves the baseline to every account, the agents it had given the candidate included
    assert set(served(keys["production"]).values()) == {BASELINE}
    breach, rollback = decisions(rolling)
    assert (breach.action, rollback.action, rollback.actor_label) == ("breach", "rollback", "system:guardrails")

    # And every step has its audit row by the system actor
    for plan, actions in ((stepping, ("plan.breached", "plan.stepped_back")),
                          (rolling, ("plan.breached", "plan.rolled_back"))):
        for action in actions:
            row = AuditEvent.objects.get(action=action, target_id=str(plan.pk))
            assert (row.actor_id, row.actor_kind, row.actor_label) == (None, ActorKind.SYSTEM, "system:guardrails")
            assert row.reason.startswith("Guardrail breached: latency_p95")
    # and the flag owner and every approver were told, once per plan, what happened
    approvers = {demo.username for demo in DEMO_USERS if Role.APPROVER in demo.roles}
    people = {Flag.objects.get(key=PROFILE).owner_user.username} | approvers
    notes = Notification.objects.filter(kind="plan.breached")
    assert sorted(notes.values_list("recipient__username", flat=True)) == sorted([*people, *people])
    assert set(notes.values_list("title", flat=True)) == {
        "Guardrail breach: support_assistant_profile in Staging stepped back to stage 1 (Internal users)",
        "Guardrail breach: support_assistant_profile in Production rolled back to baseline_v3"}
