"""Running plans served over OFREP and their evidence posted to the events API, for the tests that
judge plans from real telemetry: the real-worker tests (tests/rollouts/plans/test_guardrails_worker.py,
test_breach_step_back_worker.py, tests/site/test_queue_isolation.py) and the breach and
sample-ratio tests, which aggregate in-process.

A p95 guardrail is judged with quantile confidence sequences: it needs a few hundred outcomes
per variant before it can be told apart from the baseline, so each unit reports several
outcomes (`OUTCOMES_PER_UNIT`), as a real application reports one per request."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.utils import timezone

from flags.models import Environment, Flag
from flags.snapshot_store import reset_store
from rollouts.models import RolloutPlan
from rollouts.plans import design, transitions
from telemetry.constants import MAX_EVENTS_PER_BATCH
from tests.ofrep_client import call, evaluate
from tests.rollouts.support import user
from tests.workers import delete_queues, start_worker, stop_worker, unique_prefix, worker_env

PROFILE = "support_assistant_profile"
BASELINE, CANDIDATE = "baseline_v3", "citation_first_v4"
MIN_SAMPLES = 20
OUTCOMES_PER_UNIT = 20
LATENCY = {"metric": "latency_p95", "kind": "relative_max", "threshold": 1.2, "min_samples": MIN_SAMPLES}
STAGES = [
    {"name": "Internal users", "segments": ["internal_users"], "percentage": 0, "min_bake_minutes": 0,
     "guardrails": [LATENCY]},
    {"name": "Beta accounts", "segments": ["internal_users", "beta_accounts"], "percentage": 0,
     "min_bake_minutes": 0, "guardrails": [LATENCY]},
]
# Internal agents (the first stage gives them the candidate) and ordinary accounts (baseline
# until a stage splits the default).
AGENTS = [{"targetingKey": f"acct-agent-{i}", "accountId": f"acct-agent-{i}", "email": f"agent{i}@support.example.com"}
          for i in range(30)]
ORDINARY = [{"targetingKey": f"acct-{i:04d}", "accountId": f"acct-{i:04d}", "email": f"admin{i}@customer.example",
             "plan": "standard"} for i in range(60)]
CONTEXTS = AGENTS + ORDINARY


def started_plan(env_key: str, *, stages: list[dict[str, Any]] | None = None,
                 on_breach: str = RolloutPlan.OnBreach.STEP_BACK) -> RolloutPlan:
    """A plan of `stages` (default: internal users, then beta accounts) started in its first stage."""
    environment = Environment.objects.get(project__key="support-assistant", key=env_key)
    plan = design.plan_create(flag=Flag.objects.get(key=PROFILE), environment=environment, baseline=BASELINE,
                             candidate=CANDIDATE, stages=stages or STAGES, actor=user("owner"),
                             reason="Citation-first v4", on_breach=on_breach)
    plan = transitions.plan_start(plan=plan, reason="internal users first", actor=user("owner"))
    assert (plan.status, plan.stage_index, plan.pending_change_request) == ("running", 0, None)
    return plan


def served(sdk_key: str, contexts: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """What OFREP serves each context now (from a snapshot rebuilt from the database)."""
    reset_store(None)
    answers = {}
    for context in contexts or CONTEXTS:
        response = evaluate(PROFILE, sdk_key, context)
        assert response.status == 200, response.body
        answers[context["accountId"]] = response.json()["variant"]
    return answers


def post_events(sdk_key: str, events: list[dict[str, Any]]) -> None:
    """Events to the events API in batches as large as it takes, each accepted whole."""
    for start in range(0, len(events), MAX_EVENTS_PER_BATCH):
        batch = events[start:start + MAX_EVENTS_PER_BATCH]
        response = call("POST", "/api/v1/events", body={"batch_id": uuid.uuid4().hex, "events": batch},
                        headers={"Authorization": f"Bearer {sdk_key}"})
        assert response.status == 200 and response.json() == {"accepted": len(batch), "rejected": []}, response.body


def spread(base: float, i: int) -> float:
    """A little spread: 0 to 4.5 % above the base."""
    return base * (1 + (i % 10) / 200)


def case_events(variants: dict[str, str], latency: dict[str, float], *, outcomes: int = OUTCOMES_PER_UNIT,
                exposed_at: datetime.datetime, reported_at: datetime.datetime) -> tuple[list[dict], dict[str, list[float]]]:
    """One exposure per unit, as served, then `outcomes` latency outcomes per unit (exposures
    first, so however the batches are aggregated each outcome finds its unit's variant).
    Returns the events and the latencies sent per variant."""
    exposures, results, sent = [], [], {}
    for i, (unit, variant) in enumerate(sorted(variants.items())):
        exposures.append({"kind": "exposure", "flag": PROFILE, "variant": variant, "served": variant, "unit": unit,
                          "time": exposed_at.isoformat()})
        for j in range(outcomes):
            value = spread(latency[variant], i + j)
            sent.setdefault(variant, []).append(value)
            results.append({"kind": "outcome", "metric": "latency_p95", "value": value, "unit": unit,
                            "time": reported_at.isoformat()})
    return exposures + results, sent


def post_cases(sdk_key: str, variants: dict[str, str], latency: dict[str, float],
               outcomes: int = OUTCOMES_PER_UNIT) -> dict[str, list[float]]:
    """One exposure and `outcomes` latency outcomes per account, as served, seconds ago;
    returns the latencies sent per variant."""
    now = timezone.now()
    events, sent = case_events(variants, latency, outcomes=outcomes, exposed_at=now - datetime.timedelta(seconds=5),
                               reported_at=now - datetime.timedelta(seconds=3))
    post_events(sdk_key, events)
    return sent


def units_by_variant(variants: dict[str, str]) -> dict[str, set[str]]:
    """{variant: the units served it}."""
    grouped: dict[str, set[str]] = {}
    for unit, variant in variants.items():
        grouped.setdefault(variant, set()).add(unit)
    return grouped


SWEEP_SECONDS = 5


def sweeping_workers(tmp_path: Path, name: str, *, still_running: Callable[[], bool]) -> str:
    """Run the workers as deployed, one per queue, beat beside the safety worker (aggregation
    every 2 s, the guardrail sweep every SWEEP_SECONDS), until `still_running()` turns false or
    a minute past the first sweep (start-up on a slow machine); answers the workers' output."""
    prefix = unique_prefix(name)
    env = worker_env(tmp_path, prefix, TELEMETRY_AGGREGATE_SECONDS="2", ROLLOUT_GUARDRAIL_CHECK_SECONDS=str(SWEEP_SECONDS))
    workers = [start_worker(tmp_path, prefix, queues=["safety"], beat=True, name="safety", env=env),
               start_worker(tmp_path, prefix, queues=["telemetry"], name="telemetry", env=env),
               start_worker(tmp_path, prefix, queues=["notifications", "reminders"], name="notifications", env=env)]
    try:
        deadline = time.monotonic() + SWEEP_SECONDS + 60
        while time.monotonic() < deadline and still_running():
            time.sleep(0.5)
    finally:
        output = "\n".join(stop_worker(worker) for worker in workers)
        delete_queues(prefix)
    return output
