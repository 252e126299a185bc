"""The plan form in a real browser: under each stage, how long it needs at the traffic of the
last 7 days to tell each guardrail's allowed regression from none (rollouts/plans/power.py).

The owner opens the form for the profile flag after a week's worth of traffic was reported in
production (latencies, corrections and costs; no citation failures), reads the estimates, then
widens the 5 % stage to 20 % and saves without a reason: the page comes back with the error and
the estimates of the stage as posted. The traffic goes through the events API; what is
asserted is read in the browser.
"""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from flags.models import Environment
from flags.services import sdk_key_create
from flags.snapshot_store import reset_store
from telemetry.demo import seed_demo_metrics
from telemetry.services import events_aggregate
from tests.browser.support import REVIEW_SCREENSHOTS, review_screenshot
from tests.factories import TEST_ACTOR
from tests.ofrep_client import call

pytestmark = pytest.mark.browser

PROJECT = "support-assistant"
PROFILE = "support_assistant_profile"
BASELINE = "baseline_v3"
CASES = 2_000  # over the last few hours: ≈ 2,000 a week, for the estimates


def _report_cases(cases: int) -> None:
    """`cases` support cases served the baseline in production over the last 5 hours, each with
    its latency, whether an agent corrected it (30 %) and its cost; no citation failures."""
    rng = np.random.default_rng(20261204)
    latencies = rng.lognormal(mean=np.log(900), sigma=0.5, size=cases)
    corrected = rng.random(cases) < 0.30
    costs = rng.gamma(shape=4.0, scale=0.01, size=cases)
    environment = Environment.objects.get(project__key=PROJECT, key="production")
    key = sdk_key_create(environment=environment, name=f"power-{uuid.uuid4().hex[:6]}", actor=TEST_ACTOR)[1]
    reset_store(None)  # the store learns new keys at its next poll; this test does not wait for it
    events: list[dict[str, Any]] = []
    for i in range(cases):
        unit = f"acct-power-{i:05d}"
        at = (timezone.now() - datetime.timedelta(minutes=int(i * 300 / cases) + 1)).isoformat()
        events.append({"kind": "exposure", "flag": PROFILE, "variant": BASELINE, "served": BASELINE, "unit": unit,
                       "time": at})
        for metric, value in (("latency_p95", float(latencies[i])), ("correction_rate", float(corrected[i])),
                              ("estimated_cost_per_case", float(costs[i]))):
            events.append({"kind": "outcome", "metric": metric, "value": value, "unit": unit, "time": at})
    for first in range(0, len(events), 1_000):
        batch = events[first:first + 1_000]
        response = call("POST", "/api/v1/events", body={"batch_id": uuid.uuid4().hex, "events": batch},
                        headers={"Authorization": f"Bearer {key}"})
        assert response.status == 200 and response.json()["accepted"] == len(batch), response.body
    events_aggregate()


def test_owner_reads_how_long_each_stage_needs__and_after_an_error_the_estimates_follow_the_form(
        page: Page, login: Any, demo: dict[str, Any]) -> None:
    # Given a week's worth of cases reported in production for the profile flag
    seed_demo_metrics(demo["project"])
    _report_cases(CASES)
    login("owner")

    # When the owner opens the plan form
    page.goto(f"/p/{PROJECT}/flags/{PROFILE}/rollout-plan/new/")
    expect(page.get_by_role("heading", name=f"Plan a rollout of {PROFILE}", level=1)).to_be_visible()

    # Then the page says what the estimates rest on
    expect(page.get_by_test_id("power-note")).to_contain_text("at the traffic of the last 7 days in Production")
    # ... a segments-only stage says it cannot know its share
    expect(page.get_by_test_id("stage-power-0")).to_contain_text("Depends on how many units internal_users hold")
    # ... the 50 % experiment gives a time for the cost per case, from ≈ 290 cases a day
    cost = page.get_by_test_id("power-3-estimated_cost_per_case")
    expect(cost).to_contain_text("estimated_cost_per_case (at most 20 % worse): about")
    expect(cost).to_contain_text("≈ 290 outcomes a day reach this flag; this stage sends 50 % of them")
    # ... the metric nobody reported says so
    expect(page.get_by_test_id("power-3-citation_failure_rate")).to_contain_text(
        "no citation_failure_rate outcomes in the last 7 days: cannot estimate")
    # ... and everyone-on-the-candidate has no baseline left
    expect(page.get_by_test_id("power-4-latency_p95")).to_contain_text("no baseline is left to compare with")
    review_screenshot(page, "plan_power_form.png")
    if REVIEW_SCREENSHOTS:
        page.get_by_test_id("stage-form-3").screenshot(path=str(Path(REVIEW_SCREENSHOTS) / "plan_power_stage_4.png"))

    # When the owner widens the 5 % stage to 20 % and saves without a reason
    page.get_by_test_id("stage-form-2").get_by_label("% of everyone else").fill("20")
    page.get_by_role("button", name="Save draft plan").click()

    # Then the page comes back with the error, and that stage's estimates are for 20 %
    expect(page.get_by_text("This field is required.").first).to_be_visible()
    expect(page.get_by_test_id("power-2-estimated_cost_per_case")).to_contain_text("this stage sends 20 % of them")
    review_screenshot(page, "plan_power_after_error.png")
