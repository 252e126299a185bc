"""A running plan served over OFREP and its evidence posted to the events API, for the tests that
run real workers (tests/rollouts/plans/test_guardrails_worker.py, tests/site/test_queue_isolation.py)."""

from __future__ import annotations

import datetime
import uuid

from django.utils import timezone

from flags.models import Environment, Flag
from flags.snapshot_store import reset_store
from rollouts.models import RolloutPlan
from rollouts.plans import design, transitions
from tests.ofrep_client import call, evaluate
from tests.rollouts.support import user

PROFILE = "support_assistant_profile"
BASELINE, CANDIDATE = "baseline_v3", "citation_first_v4"
MIN_SAMPLES = 20
LATENCY = {"metric": "latency_p95", "kind": "relative_max", "threshold": 1.2, "min_samples": MIN_SAMPLES}
STAGES = [
    {"name": "Internal users", "segments": ["internal_users"], "percentage": 0, "min_bake_minutes": 0,
     "guardrails": [LATENCY]},
    {"name": "Beta accounts", "segments": ["internal_users", "beta_accounts"], "percentage": 0,
     "min_bake_minutes": 0, "guardrails": [LATENCY]},
]
# Internal agents (the first stage gives them the candidate) and ordinary accounts (baseline).
CONTEXTS = ([{"targetingKey": f"acct-agent-{i}", "accountId": f"acct-agent-{i}",
              "email": f"agent{i}@support.example.com"} for i in range(30)]
            + [{"targetingKey": f"acct-{i:04d}", "accountId": f"acct-{i:04d}", "email": f"admin{i}@customer.example",
                "plan": "standard"} for i in range(30)])


def started_plan(env_key: str) -> RolloutPlan:
    environment = Environment.objects.get(project__key="support-assistant", key=env_key)
    plan = design.plan_create(flag=Flag.objects.get(key=PROFILE), environment=environment, baseline=BASELINE,
                             candidate=CANDIDATE, stages=STAGES, actor=user("owner"), reason="Citation-first v4")
    plan = transitions.plan_start(plan=plan, reason="internal users first", actor=user("owner"))
    assert (plan.status, plan.stage_index, plan.pending_change_request) == ("running", 0, None)
    return plan


def served(sdk_key: str) -> dict[str, str]:
    """What OFREP serves each context now (from a snapshot rebuilt from the database)."""
    reset_store(None)
    answers = {}
    for context in CONTEXTS:
        response = evaluate(PROFILE, sdk_key, context)
        assert response.status == 200, response.body
        answers[context["accountId"]] = response.json()["variant"]
    return answers


def post_cases(sdk_key: str, variants: dict[str, str], latency: dict[str, float]) -> dict[str, list[float]]:
    """One exposure and one latency outcome per account, as served; returns the latencies sent."""
    now = timezone.now()
    events, sent = [], {}
    for i, (account, variant) in enumerate(sorted(variants.items())):
        value = latency[variant] * (1 + (i % 10) / 200)  # a little spread: 0 to 4.5 % above the base
        sent.setdefault(variant, []).append(value)
        events.append({"kind": "exposure", "flag": PROFILE, "variant": variant, "served": variant, "unit": account,
                       "time": (now - datetime.timedelta(seconds=5)).isoformat()})
        events.append({"kind": "outcome", "metric": "latency_p95", "value": value, "unit": account,
                       "time": (now - datetime.timedelta(seconds=3)).isoformat()})
    response = call("POST", "/api/v1/events", body={"batch_id": uuid.uuid4().hex, "events": events},
                    headers={"Authorization": f"Bearer {sdk_key}"})
    assert response.status == 200 and response.json() == {"accepted": len(events), "rejected": []}, response.body
    return sent

