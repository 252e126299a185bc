"""Helpers of the rollout plans' tests: the demo's profile flag and its environments, plans
from the seed template or of four quick stages, a stage's bake time over, what the engine
serves, a request approved and applied, latencies posted to the events API and aggregated,
and the plan pages' URLs."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from django.urls import reverse
from django.utils import timezone

from flags.evaluation.engine import compile_snapshot, evaluate
from flags.models import Environment, Flag, Targeting
from flags.services import sdk_key_create
from flags.snapshot_builder import build_environment_snapshot
from flags.snapshot_store import reset_store
from rollouts.change_control import applying, approving
from rollouts.models import ChangeRequest, RolloutPlan
from rollouts.plans import design
from telemetry.services import events_aggregate
from tests.factories import TEST_ACTOR
from tests.ofrep_client import call
from tests.rollouts.support import user

PROFILE = "support_assistant_profile"
BASELINE, CANDIDATE = "baseline_v3", "citation_first_v4"
# The latency guardrail the seed template gives each stage, and a quicker one: judged after 20 samples
LATENCY = {"metric": "latency_p95", "kind": "relative_max", "threshold": 1.2, "min_samples": 50}
LATENCY_MIN_20 = {"metric": "latency_p95", "kind": "relative_max", "threshold": 1.2, "min_samples": 20}


def environment(key: str) -> Environment:
    return Environment.objects.get(project__key="support-assistant", key=key)


def flag() -> Flag:
    return Flag.objects.get(key=PROFILE)


def targeting(env_key: str) -> Targeting:
    return Targeting.objects.get(flag__key=PROFILE, environment__key=env_key)


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


def make_plan(env_key: str = "staging", bake: int = 0, last_needs_approval: bool = False) -> RolloutPlan:
    stages = [{"name": name, "segments": segments, "percentage": percentage, "min_bake_minutes": bake,
               "guardrails": [LATENCY_MIN_20], "needs_approval": last_needs_approval and i == 3}
              for i, (name, segments, percentage) in enumerate([
                  ("Internal users", ["internal_users"], 0), ("Beta accounts", ["internal_users", "beta_accounts"], 0),
                  ("5 %", ["internal_users", "beta_accounts"], 5_000),
                  ("50 %", ["internal_users", "beta_accounts"], 50_000)])]
    return design.plan_create(flag=flag(), environment=environment(env_key), baseline=BASELINE, candidate=CANDIDATE,
                             stages=stages, actor=user("owner"), reason="v4 is ready")


def plan_url(plan: RolloutPlan, action: str = "") -> str:
    if action:
        return reverse("rollouts:plan_action", kwargs={"project_key": "support-assistant", "pk": plan.pk,
                                                       "action": action})
    return reverse("rollouts:plan_detail", kwargs={"project_key": "support-assistant", "pk": plan.pk})


def report(env_key: str, latencies: dict[str, list[float]], minutes_ago: float = 0) -> None:
    """Exposures and latency outcomes per variant, posted to the events API, then aggregated."""
    at = (timezone.now() - datetime.timedelta(minutes=minutes_ago)).isoformat()
    events: list[dict[str, Any]] = []
    for variant, values in latencies.items():
        for i, value in enumerate(values):
            unit = f"{variant}-{uuid.uuid4().hex[:8]}-{i}"
            events.append({"kind": "exposure", "flag": PROFILE, "variant": variant, "served": variant,
                           "unit": unit, "time": at})
            events.append({"kind": "outcome", "metric": "latency_p95", "value": value, "unit": unit, "time": at})
    key = sdk_key_create(environment=environment(env_key), name=f"tests-{uuid.uuid4().hex[:6]}", actor=TEST_ACTOR)[1]
    reset_store(None)  # the store learns new keys at its next poll; this test does not wait for it
    response = call("POST", "/api/v1/events", body={"batch_id": uuid.uuid4().hex, "events": events},
                    headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200 and response.json()["accepted"] == len(events), response.body
    events_aggregate()


def htmx_post(client: Any, url: str, data: dict[str, Any]) -> Any:
    return client.post(url, data, headers={"HX-Request": "true"})

