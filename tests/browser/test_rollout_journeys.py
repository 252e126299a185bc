"""Rollout plans in a real browser, person by person.

1. The flag owner reviews a plan at 5 % of eligible traffic (the evidence in words, a band of
   each guardrail's 95 % interval over the stage, charts per variant, sample sizes: latency and
   cost hold, the rates are not yet clear) and asks to advance it to the 50 % experiment; in
   production that opens a change request. The product manager reviews the evidence beside
   the diff on the request page and approves, the owner applies, the plan moves to stage 4 and
   OFREP serves the candidate to about half of the accounts outside the plan's segments (about
   5 % before).
2. A latency regression is reported to the events API while the owner has the plan page
   open at stage 2. Nobody acts: a real Celery worker with embedded beat, in its own process
   on the configured broker, aggregates the events and runs the guardrail sweep on its
   schedule, which steps the plan back to stage 1 and pauses it there, as the system. The owner
   reloads and reads why in words (the latency interval and what the plan did), the breach in
   the decision log and in their notifications, and no Advance or Promote button.
3. The same regression on the open page before any sweep: the latency band is red, in words
   too, and Advance is blocked with them.

The set-up before each walk goes through the services (plans, change requests, the events
API); what is asserted happens in the browser, over OFREP, or in the worker.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import Page, expect

from audit.services import SystemActor
from flags import services as flag_services
from flags.models import Environment, Flag, Targeting
from flags.snapshot_store import reset_store
from notifications.models import Notification
from rollouts.change_control import approval_policy
from rollouts.models import ChangeRequest, ReleaseDecision, RolloutPlan
from rollouts.plans import design, measurement, transitions
from telemetry import ingest
from telemetry.demo import seed_demo_metrics
from telemetry.services import events_aggregate
from tests import workers
from tests.browser.support import (
    Evaluate,
    accept_dialogs,
    assert_no_full_page_load,
    review_screenshot,
    set_page_marker,
    through_approval,
    wait_for_ofrep,
)
from tests.ofrep_client import call
from tests.workers import require_broker, unique_prefix, worker_env

pytestmark = pytest.mark.browser

PROJECT = "support-assistant"
PROFILE = "support_assistant_profile"
BASELINE, CANDIDATE = "baseline_v3", "citation_first_v4"
SWEEP_SECONDS = 5  # the worker's guardrail sweep interval (ROLLOUT_GUARDRAIL_CHECK_SECONDS)
# A p95 guardrail's confidence sequence settles after a few hundred outcomes per variant
# (rollouts/plans/sequential.py); the template's guardrails judge from 50 samples at the least.
UNITS_PER_VARIANT = 300
BATCH_EVENTS = 1_000  # the events API's largest batch
# Accounts in neither internal_users nor beta_accounts: only the plan's percentage reaches them.
OTHER_ACCOUNTS = [{"targetingKey": f"acct-other-{i:04d}", "accountId": f"acct-other-{i:04d}"} for i in range(400)]


def user(name: str) -> Any:
    return get_user_model().objects.get(username=name)


def plan_url(plan: RolloutPlan) -> str:
    return f"/p/{PROJECT}/rollouts/{plan.pk}/"


def cr_url(change_request_id: int) -> str:
    return f"/p/{PROJECT}/changes/{change_request_id}/"


def production() -> Environment:
    return Environment.objects.get(project__key=PROJECT, key="production")


def sdk_key(name: str) -> str:
    return flag_services.sdk_key_create(environment=production(), name=name, actor=SystemActor("tests"))[1]


# --- set-up through the services ----------------------------------------------------------


def baked(plan: RolloutPlan) -> RolloutPlan:
    """Pretend the current stage was entered an hour more than its bake time ago."""
    stage = design.plan_stages(plan)[plan.stage_index]
    RolloutPlan.objects.filter(pk=plan.pk).update(
        stage_entered_at=timezone.now() - datetime.timedelta(minutes=stage.min_bake_minutes + 60))
    return RolloutPlan.objects.get(pk=plan.pk)


def report(key: str, outcomes: Callable[[str, int], dict[str, float]],
           ago: Callable[[int], datetime.timedelta]) -> int:
    """For each variant, UNITS_PER_VARIANT accounts exposed to it (account i `ago(i)` before
    now) and their outcomes a second later, posted to the events API. Returns the number of
    events accepted. (A stage's evidence counts what happened since the minute it was entered.)"""
    now = timezone.now()
    events: list[dict[str, Any]] = []
    for variant in (BASELINE, CANDIDATE):
        for i in range(UNITS_PER_VARIANT):
            unit = f"acct-{variant}-{uuid.uuid4().hex[:8]}"
            at = now - ago(i)
            events.append({"kind": "exposure", "flag": PROFILE, "variant": variant, "served": variant, "unit": unit,
                           "time": at.isoformat()})
            events += [{"kind": "outcome", "metric": metric, "value": value, "unit": unit,
                        "time": (at + datetime.timedelta(seconds=1)).isoformat()}
                       for metric, value in outcomes(variant, i).items()]
    for first in range(0, len(events), BATCH_EVENTS):
        batch = events[first:first + BATCH_EVENTS]
        response = call("POST", "/api/v1/events", body={"batch_id": uuid.uuid4().hex, "events": batch},
                        headers={"Authorization": f"Bearer {key}"})
        assert response.status == 200 and response.json() == {"accepted": len(batch), "rejected": []}, response.body
    return len(events)


def healthy(variant: str, i: int) -> dict[str, float]:
    """The candidate about as good as the baseline on every guardrail of the template."""
    candidate = variant == CANDIDATE
    return {
        "latency_p95": (410.0 if candidate else 400.0) + (i % 10) * 8,
        "correction_rate": 1.0 if i % 10 == 0 else 0.0,
        "citation_failure_rate": 1.0 if i % 20 == 0 else 0.0,
        "estimated_cost_per_case": (0.021 if candidate else 0.020) + (i % 5) * 0.001,
        "resolved_without_escalation": 0.0 if i % (6 if candidate else 5) == 0 else 1.0,
    }


def served_candidate(evaluate: Evaluate) -> set[str]:
    """The accounts of OTHER_ACCOUNTS that OFREP serves the candidate now (each one over HTTP)."""
    chosen = set()
    for context in OTHER_ACCOUNTS:
        body = evaluate(PROFILE, context)
        assert body["variant"] in (BASELINE, CANDIDATE) and body["reason"] == "SPLIT", body  # the plan's default split
        if body["variant"] == CANDIDATE:
            chosen.add(context["accountId"])
    return chosen


def ofrep_at_current_version(evaluate: Evaluate) -> None:
    """Wait (bounded) until OFREP's snapshot has the targeting now in the database."""
    version = Targeting.objects.get(flag__key=PROFILE, environment__key="production").version
    body, elapsed = wait_for_ofrep(evaluate, PROFILE, OTHER_ACCOUNTS[0],
                                   lambda b: b.get("metadata", {}).get("targetingVersion") == version,
                                   since=time.monotonic(), within=5.0)
    assert body["metadata"]["targetingVersion"] == version, f"OFREP still at {body['metadata']} after {elapsed:.1f} s"


# --- walk 1: evidence reviewed, 5 % → 50 % through an approval -------------------------------


REASON_50 = "Latency and cost hold at 5 % for a day; the rates are not yet clear either way: start the 50 % experiment."


def test_pm_reviews_evidence_and_advances_5_to_50_through_approval__ofrep_serves_half(
    as_user: Callable[[str], Page], ofrep: Evaluate, demo: dict[str, Any],
    record_property: Callable[[str, object], None],
) -> None:
    started = time.monotonic()
    # Given the demo's metrics and a plan from the seed template for the profile in production
    seed_demo_metrics(demo["project"])
    ingest.metric_ids.clear()
    owner = user("owner")
    plan = design.plan_from_template(flag=Flag.objects.get(key=PROFILE), environment=production(),
                                    candidate=CANDIDATE, actor=owner, reason="Citation-first v4 is ready")
    # brought through its first three stages (each approved and applied as production asks,
    # each baked past its bake time)
    plan = baked(through_approval(transitions.plan_start(plan=plan, reason="internal users first", actor=owner)))
    for reason in ("beta accounts next", "5 % of eligible traffic"):
        plan = baked(through_approval(transitions.plan_advance(plan=plan, reason=reason, actor=owner)))
    assert (plan.status, plan.stage_index) == ("running", 2)
    # and healthy telemetry for both variants, reported to the events API and aggregated
    # (over the last day of stage 3, which the set-up says was entered 25 hours ago: an hour apart)
    events = report(sdk_key("walk telemetry"), healthy,
                    lambda i: datetime.timedelta(hours=i % 24, minutes=1, seconds=30))
    assert events_aggregate() == events
    # With 300 outcomes per variant the latency and cost intervals lie well within the 20 % allowed;
    # the rates (10 % and 5 % of cases, the same in both) need thousands before theirs do: not yet clear
    evidence = measurement.plan_evidence(plan)
    assert {g["metric"]: g["status"] for g in evidence["guardrails"]} == {
        "latency_p95": "green", "correction_rate": "amber", "citation_failure_rate": "amber",
        "estimated_cost_per_case": "green"}, evidence["guardrails"]
    assert evidence["status"] == "amber" and not evidence["untrustworthy"], evidence["sample_ratio"]
    # and OFREP serves the candidate to about 5 % of the accounts outside the segments
    ofrep_at_current_version(ofrep)
    at_5 = served_candidate(ofrep)
    record_property("candidate_share_at_5_percent", len(at_5) / len(OTHER_ACCOUNTS))
    assert len(at_5) < 0.15 * len(OTHER_ACCOUNTS), f"{len(at_5)} of {len(OTHER_ACCOUNTS)} at the 5 % stage"
    setup_done = time.monotonic()

    # When the owner opens the rollout board
    page = as_user("owner")
    page.goto(f"/p/{PROJECT}/rollouts/")
    expect(page.get_by_role("heading", name="Rollouts", level=1)).to_be_visible()

    # Then the plan is there, running at stage 3 of 5, guardrails not yet clear (the rates), next: stage 4
    row = page.get_by_test_id("board-open").locator(f"tr[data-plan='{plan.pk}']")
    expect(row).to_contain_text("Running")
    expect(row).to_contain_text("3 of 5 · 5 % of eligible traffic")
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "amber")
    expect(row).to_contain_text("Correction rate is between")
    expect(row).to_contain_text("Advance to stage 4 (50 % experiment)")

    # When they open the plan
    row.get_by_role("link", name=PROFILE).click()
    expect(page).to_have_url(re.compile(rf"{plan_url(plan)}$"))
    expect(page.get_by_role("heading", name=f"Rollout of {PROFILE} in Production", level=1)).to_be_visible()

    # Then stage 3 is current, and the evidence says in words what each guardrail's 95 % interval shows
    expect(page.get_by_test_id("plan-status")).to_have_text("Running")
    expect(page.locator("[aria-current='step']")).to_contain_text("3. 5 % of eligible traffic")
    words = page.get_by_test_id("plan-words")
    said = words.get_by_test_id("words-guardrail")
    expect(said).to_have_count(4)
    expect(said.filter(has_text="Latency (p95) is")).to_contain_text("(20 % worse allowed): holds")
    expect(said.filter(has_text="Latency (p95) is").locator("[data-status]")).to_have_attribute("data-status",
                                                                                              "green")
    expect(said.filter(has_text="Correction rate is between")).to_contain_text(": not yet clear")
    expect(words.get_by_test_id("words-primary")).to_contain_text(
        "Primary metric: Resolved without escalation is")
    expect(words.get_by_test_id("words-sample-ratio")).to_contain_text("the split looks as configured")
    expect(words.get_by_test_id("words-did")).to_have_count(0)  # nothing stopped the plan
    # with, per metric, its interval over the stage as a band, judged as its words say, above
    # the values per variant over the whole plan
    latency = page.get_by_test_id("chart-latency_p95")
    band = latency.get_by_test_id("band-latency_p95")
    expect(band).to_have_attribute("data-verdict", "green")
    expect(band.locator("svg.band-chart polygon.band")).to_have_count(1)
    expect(band.locator("svg.band-chart line.limit")).to_have_count(1)  # +20 % allowed
    expect(band.locator("svg.band-chart circle.estimate-point")).to_have_count(24)  # a check per hour with data
    expect(latency.locator("svg.chart:not(.band-chart) polyline")).to_have_count(2)  # baseline and candidate
    expect(latency.locator(".legend").last).to_contain_text(f"{BASELINE} {UNITS_PER_VARIANT} samples")
    expect(latency.locator(".legend").last).to_contain_text(f"{CANDIDATE} {UNITS_PER_VARIANT} samples")
    for metric, verdict in (("correction_rate", "amber"), ("citation_failure_rate", "amber"),
                            ("estimated_cost_per_case", "green")):
        expect(page.get_by_test_id(f"band-{metric}")).to_have_attribute("data-verdict", verdict)
        expect(page.get_by_test_id(f"chart-{metric}").locator("svg")).to_have_count(2)
    expect(page.get_by_test_id("chart-resolved_without_escalation").locator("svg")).to_have_count(2)
    samples = page.get_by_test_id("plan-samples")
    for variant in (BASELINE, CANDIDATE):
        cells = samples.locator("tr").filter(has=page.locator(f"code:text-is('{variant}')")).locator("td")
        expect(cells.nth(1)).to_have_text(str(UNITS_PER_VARIANT))  # exposures
        expect(cells.nth(2)).to_have_text(str(UNITS_PER_VARIANT))  # units
    guardrails = page.get_by_test_id("plan-guardrails").locator("tbody tr")
    expect(guardrails).to_have_count(4)
    expect(guardrails.locator("[data-status='green']")).to_have_count(2)
    expect(guardrails.locator("[data-status='amber']")).to_have_count(2)
    expect(page.locator("#guard-h [data-status]")).to_have_attribute("data-status", "amber")
    # (not yet clear is no breach: advancing is the owner's call)
    advance = page.get_by_role("button", name="Advance to stage 4 (50 % experiment)")
    expect(advance).to_be_enabled()
    # and, production being governed, the button says it will wait for approvers
    expect(advance.locator("xpath=..")).to_contain_text("opens a change request")
    review_screenshot(page, "rollout_plan_stage_3.png")
    latency.scroll_into_view_if_needed()
    review_screenshot(page, "rollout_plan_stage_3_band.png")

    # When they give a reason and advance, accepting the confirmation
    dialogs = accept_dialogs(page)
    set_page_marker(page)
    page.get_by_label("Reason").fill(REASON_50)
    advance.click()

    # Then the plan waits for approval of a new change request, with a link to it (htmx swap)
    expect(page.locator("#messages")).to_contain_text("opened: the stage change waits for approval")
    pending = page.get_by_test_id("plan-pending")
    expect(pending).to_contain_text("Waiting for CR-")
    plan.refresh_from_db()
    change_request = ChangeRequest.objects.get(pk=plan.pending_change_request_id)
    expect(page.locator("#messages")).to_contain_text(
        f"CR-{change_request.pk} opened: the stage change waits for approval. Approvers have been notified; "
        "the plan moves when it is applied.")
    expect(pending).to_contain_text(f"Waiting for CR-{change_request.pk}: 0 of 1 approvals (pending)")
    expect(pending.get_by_role("link", name=f"CR-{change_request.pk}")).to_have_attribute(
        "href", cr_url(change_request.pk))
    expect(page.get_by_test_id("plan-stages").locator("li").nth(3)).to_contain_text("waiting for approval")
    expect(page.locator("[aria-current='step']")).to_contain_text("3. 5 % of eligible traffic")
    expect(page.get_by_role("button", name="Advance to stage 4 (50 % experiment)")).to_be_disabled()
    assert_no_full_page_load(page)
    assert len(dialogs) == 1 and dialogs[0].startswith(f"Advance {PROFILE} in Production:"), dialogs
    assert "50 % of everyone else" in dialogs[0], dialogs
    # a widened audience, not an escalation: production's policy asks one approval
    assert (change_request.status, change_request.escalation, change_request.required_approvals) == (
        "pending", False, approval_policy.policy_for(production()).approvals_otherwise)
    assert change_request.requester == owner
    assert plan.stage_index == 2
    assert ofrep(PROFILE, OTHER_ACCOUNTS[0])["metadata"]["targetingVersion"] == change_request.base_version

    # When the product manager logs in and opens the request from their change-request inbox
    pm = as_user("pm")
    expect(pm.locator("#nav-approvals .count")).to_have_text("1")
    pm.locator("#nav-approvals").click()
    pm.locator("#waiting + table").get_by_role("link", name=f"CR-{change_request.pk}", exact=True).click()
    expect(pm).to_have_url(re.compile(rf"{cr_url(change_request.pk)}$"))
    expect(pm.get_by_role("heading", name=f"CR-{change_request.pk}: {PROFILE} in Production", level=1)).to_be_visible()

    # Then beside the diff they see the evidence for this step: the guardrails in words (two
    # hold, two not yet clear), sample sizes, the split's check, the bands and the charts
    expect(pm.get_by_test_id("cr-diff")).to_contain_text("50 %")
    evidence = pm.get_by_test_id("cr-evidence")
    expect(evidence).to_be_visible()
    expect(evidence).to_contain_text(f"Stage 4 (50 % experiment): internal_users, beta_accounts + 50 % of everyone "
                                     f"else get {CANDIDATE}")
    expect(evidence.locator("#evidence-h + [data-status]")).to_have_attribute("data-status", "amber")
    expect(evidence).to_contain_text("Guardrails were amber when requested")
    expect(evidence.get_by_test_id("plan-guardrails").locator("tbody tr [data-status='green']")).to_have_count(2)
    messages = evidence.get_by_test_id("guardrail-message")
    expect(messages).to_have_count(4)
    expect(messages.filter(has_text="Latency (p95) is")).to_contain_text("(20 % worse allowed): holds")
    expect(evidence.get_by_test_id("sample-ratio")).to_contain_text("the split looks as configured")
    expect(evidence.get_by_test_id("band-latency_p95")).to_have_attribute("data-verdict", "green")
    expect(evidence.get_by_test_id("plan-samples")).to_contain_text(BASELINE)
    expect(evidence.get_by_test_id("plan-samples")).to_contain_text(CANDIDATE)
    expect(evidence.get_by_test_id("chart-latency_p95").locator("svg.chart:not(.band-chart) polyline")).to_have_count(2)
    review_screenshot(pm, "rollout_cr_evidence.png")

    # When they approve
    set_page_marker(pm)
    pm.get_by_label("Comment (optional)").fill("Latency and cost hold at 5 %; the rates get their answer at 50 %. Go.")
    pm.get_by_role("button", name="Approve").click()
    expect(pm.get_by_test_id("cr-approvals")).to_have_text(f"1 of {change_request.required_approvals}")
    assert_no_full_page_load(pm)
    last_approver = pm
    if change_request.required_approvals > 1:  # a stricter policy: the second approver too
        last_approver = as_user("lead")
        last_approver.goto(cr_url(change_request.pk))
        last_approver.get_by_role("button", name="Approve").click()
        expect(last_approver.get_by_test_id("cr-approvals")).to_have_text(f"2 of {change_request.required_approvals}")

    # Then the request is approved, and the plan has not moved yet
    expect(last_approver.get_by_test_id("cr-status")).to_have_text("Approved")
    change_request.refresh_from_db()
    assert change_request.status == "approved"
    assert RolloutPlan.objects.get(pk=plan.pk).stage_index == 2

    # When the owner follows the link on the plan page and applies the request, confirming
    page.reload()
    expect(page.get_by_test_id("plan-pending")).to_contain_text(
        f"{change_request.required_approvals} of {change_request.required_approvals} approvals (approved)")
    page.get_by_test_id("plan-pending").get_by_role("link", name=f"CR-{change_request.pk}").click()
    expect(page).to_have_url(re.compile(rf"{cr_url(change_request.pk)}$"))
    page.get_by_role("button", name="Apply now").click()
    applied_at = time.monotonic()

    # Then the request is applied
    expect(page.get_by_test_id("cr-status")).to_have_text("Applied")
    expect(page.locator("#messages")).to_contain_text("Applied: the change is live.")
    assert dialogs[1:] == [f"Apply CR-{change_request.pk} to Production now?"], dialogs
    # and OFREP serves the new targeting soon after (its snapshot store polls for changes)
    ofrep_at_current_version(ofrep)
    record_property("apply_to_ofrep_seconds", round(time.monotonic() - applied_at, 3))

    # And the plan page shows stage 4 current, and the advance with its request in the decision log
    page.goto(plan_url(plan))
    expect(page.get_by_test_id("plan-status")).to_have_text("Running")
    expect(page.locator("[aria-current='step']")).to_contain_text("4. 50 % experiment")
    expect(page.get_by_test_id("plan-pending")).to_have_count(0)
    log = page.get_by_test_id("plan-decisions").locator("> li")
    expect(log.first).to_contain_text("Advance by system:rollout-plans")
    expect(log.first).to_contain_text("stage 3 → stage 4")
    expect(log.first).to_contain_text(f"CR-{change_request.pk} (applied)")
    asked = log.filter(has_text=REASON_50)
    expect(asked).to_have_count(1)
    expect(asked).to_contain_text("Advance by owner")
    expect(asked).to_contain_text(f"CR-{change_request.pk} (applied)")
    expect(asked.get_by_role("link", name=f"CR-{change_request.pk}")).to_have_attribute(
        "href", cr_url(change_request.pk))
    review_screenshot(page, "rollout_plan_stage_4.png")
    plan.refresh_from_db()
    assert (plan.status, plan.stage_index, plan.pending_change_request_id) == ("running", 3, None)
    assert list(ReleaseDecision.objects.filter(plan=plan, change_request=change_request).order_by("id")
                .values_list("action", "actor_label", "from_stage", "to_stage")) == [
        ("advance", "owner", 2, 3), ("advance", "system:rollout-plans", 2, 3)]

    # And OFREP serves the candidate to about half of the accounts outside the segments,
    # including every one of those that had it at 5 % (exposure only grows)
    at_50 = served_candidate(ofrep)
    record_property("candidate_share_at_50_percent", len(at_50) / len(OTHER_ACCOUNTS))
    assert 0.35 * len(OTHER_ACCOUNTS) <= len(at_50) <= 0.65 * len(OTHER_ACCOUNTS), (
        f"{len(at_50)} of {len(OTHER_ACCOUNTS)} at the 50 % stage")
    assert at_5 <= at_50, f"lost the candidate at 50 %: {sorted(at_5 - at_50)}"
    record_property("setup_seconds", round(setup_done - started, 2))
    record_property("browser_seconds", round(time.monotonic() - setup_done, 2))


# --- walk 2: a latency regression steps the plan back, with nobody acting ----------------------


LATENCY_GUARDRAIL = {"metric": "latency_p95", "kind": "relative_max", "threshold": 1.2, "min_samples": 20}
TWO_STAGES = [
    {"name": "Internal users", "segments": ["internal_users"], "percentage": 0, "min_bake_minutes": 0,
     "guardrails": [LATENCY_GUARDRAIL]},
    {"name": "Beta accounts", "segments": ["internal_users", "beta_accounts"], "percentage": 0,
     "min_bake_minutes": 0, "guardrails": [LATENCY_GUARDRAIL]},
]


def regression(variant: str, i: int) -> dict[str, float]:
    """The candidate about 2.5 times slower than the baseline."""
    return {"latency_p95": (1000.0 if variant == CANDIDATE else 400.0) + (i % 10) * 4}


def start_workers(tmp_path: Path, prefix: str) -> list[subprocess.Popen[bytes]]:
    """Workers as deployed, one per queue group, with beat beside the safety worker, on the test
    database and the configured broker, on queues of the test's own (others may share the
    broker); events are aggregated every 2 s, the guardrail sweep every SWEEP_SECONDS."""
    env = worker_env(tmp_path, prefix, TELEMETRY_AGGREGATE_SECONDS="2", ROLLOUT_GUARDRAIL_CHECK_SECONDS=str(SWEEP_SECONDS))
    return [workers.start_worker(tmp_path, prefix, queues=["safety"], beat=True, name="safety", env=env),
            workers.start_worker(tmp_path, prefix, queues=["telemetry"], name="telemetry", env=env),
            workers.start_worker(tmp_path, prefix, queues=["notifications", "reminders"], name="notifications", env=env)]


@pytest.mark.postgres
@pytest.mark.broker
def test_injected_latency_regression_steps_the_plan_back_by_itself__owner_sees_why_in_words_and_no_advance(
    page: Page, login: Callable[[str], Page], demo: dict[str, Any], tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    require_broker()
    # Given a plan running in production at its second stage (beta accounts), judged on latency
    # (p95 at most 1.2 × the baseline's, from 20 samples), with the default breach action (step
    # back to the last good stage), committed
    seed_demo_metrics(demo["project"])
    ingest.metric_ids.clear()
    owner = user("owner")
    plan = design.plan_create(flag=Flag.objects.get(key=PROFILE), environment=production(), baseline=BASELINE,
                             candidate=CANDIDATE, stages=TWO_STAGES, actor=owner, reason="Citation-first v4")
    assert plan.on_breach == RolloutPlan.OnBreach.STEP_BACK
    plan = through_approval(transitions.plan_start(plan=plan, reason="internal users first", actor=owner))
    plan = through_approval(transitions.plan_advance(plan=plan, reason="beta accounts next", actor=owner))
    assert (plan.status, plan.stage_index) == ("running", 1)
    # (the owner has read what the set-up's approvals told them)
    Notification.objects.filter(recipient=owner).update(read_at=timezone.now())
    # entered two minutes ago, so events seconds old fall inside the stage's window whatever the
    # clock (a window starts at the minute its stage was entered)
    RolloutPlan.objects.filter(pk=plan.pk).update(stage_entered_at=timezone.now() - datetime.timedelta(minutes=2))

    # And the owner has the plan page open: running, amber (no samples yet), Promote offered
    login("owner")
    page.goto(plan_url(plan))
    expect(page.get_by_test_id("plan-status")).to_have_text("Running")
    expect(page.locator("#guard-h [data-status]")).to_have_attribute("data-status", "amber")
    expect(page.get_by_test_id("band-latency_p95")).to_have_attribute("data-verdict", "amber")
    expect(page.get_by_test_id("band-latency_p95")).to_contain_text("Latency (p95): 0 of 30 candidate samples")
    expect(page.get_by_role("button", name=f"Promote {CANDIDATE} to everyone")).to_be_enabled()
    expect(page.get_by_role("button", name="Resume")).to_have_count(0)
    expect(page.locator("#nav-notifications")).to_have_text("Notifications")

    # When the applications report a regression: the candidate's latency about 2.5 × the baseline's
    # (just now: after the stage was entered)
    report(sdk_key("walk telemetry"), regression, lambda i: datetime.timedelta(seconds=2))
    # and a worker with beat runs; nobody acts (the test only watches the database)
    prefix = unique_prefix("rollout-walk")
    running = start_workers(tmp_path, prefix)
    started = time.monotonic()
    try:
        # the first sweep comes one interval after beat starts; allow for start-up and a slow machine
        deadline = started + SWEEP_SECONDS + 60
        while time.monotonic() < deadline and RolloutPlan.objects.get(pk=plan.pk).status == "running":
            time.sleep(0.5)
        stopped_after = time.monotonic() - started
    finally:
        output = "\n".join(workers.stop_worker(worker) for worker in running)
        workers.delete_queues(prefix)
    record_property("worker_start_to_step_back_seconds", round(stopped_after, 1))

    # Then the system stepped the plan back to stage 1 and paused it there
    plan.refresh_from_db()
    assert (plan.status, plan.stage_index) == ("paused", 0), output[-3000:]
    assert list(ReleaseDecision.objects.filter(plan=plan).exclude(action__in=("start", "advance")).order_by("id")
                .values_list("action", "actor_label")) == [("breach", "system:guardrails"),
                                                          ("step_back", "system:guardrails")]

    # When the owner reloads the page
    page.reload()

    # Then it says Paused at stage 1, and in words why: the latency interval, wholly beyond the
    # 20 % allowed, and what the plan did about it
    expect(page.get_by_test_id("plan-status")).to_have_text("Paused")
    expect(page.locator("[aria-current='step']")).to_contain_text("1. Internal users")
    expect(page.get_by_test_id("plan-next")).to_have_text("Resume or roll back")
    did = page.get_by_test_id("words-did")
    expect(did).to_contain_text(re.compile(
        r"Guardrail breached: Latency \(p95\) is worse by \d+(\.\d+)? %–\d+(\.\d+)? % than the baseline with 95 % "
        r"confidence \(20 % worse allowed\): breached; stepped back to stage 1 \(Internal users\) by system:guardrails"))
    # and stage 1's guardrail is judged again from the step back (from the minute it happened in:
    # the regression's own events count there when they fell in that minute, so its colour varies)
    row = page.get_by_test_id("plan-guardrails").locator("tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("candidate latency_p95 at most 1.2 × baseline (from 20 samples)")
    # and the breach is in the decision log, with the evidence it was judged on
    log = page.get_by_test_id("plan-decisions").locator("> li")
    breach = log.filter(has_text="Guardrail breach by system:guardrails")
    expect(breach).to_have_count(1)
    expect(breach).to_contain_text(re.compile(r"Guardrail breached: latency_p95 is worse by \d+(\.\d+)? %–"))
    expect(breach).to_contain_text("Evidence then: guardrails red")
    expect(log.first).to_contain_text("Step back by system:guardrails")
    expect(log.first).to_contain_text("stage 2 → stage 1")
    # and their Notifications count shows the breach
    expect(page.locator("#nav-notifications .count")).to_have_text("1")
    # and a paused plan offers Resume and Roll back, not Advance
    expect(page.get_by_role("button", name=re.compile(r"^(Advance|Promote)"))).to_have_count(0)
    expect(page.get_by_role("button", name="Resume")).to_be_enabled()
    expect(page.get_by_role("button", name=f"Roll back to {BASELINE}")).to_be_enabled()
    review_screenshot(page, "rollout_plan_stepped_back.png")

    # And the notification itself says what happened
    page.locator("#nav-notifications").click()
    notification = page.get_by_test_id("notification").filter(
        has_text=f"Guardrail breach: {PROFILE} in Production stepped back to stage 1 (Internal users)")
    expect(notification).to_have_count(1)
    expect(notification).to_have_attribute("data-unread", "true")
    expect(notification).to_contain_text("latency_p95")


# --- walk 3: a regression on the open page, before any sweep -----------------------------------


def test_regression_in_the_stage__owner_sees_the_red_band_the_words_and_advance_blocked(
    as_user: Callable[[str], Page], demo: dict[str, Any],
) -> None:
    # Given a plan running in production at its first stage, judged on latency, and a
    # regression reported in its second minute (the candidate about 2.5 × slower), aggregated;
    # no sweep has run yet
    seed_demo_metrics(demo["project"])
    ingest.metric_ids.clear()
    owner = user("owner")
    plan = design.plan_create(flag=Flag.objects.get(key=PROFILE), environment=production(), baseline=BASELINE,
                             candidate=CANDIDATE, stages=TWO_STAGES, actor=owner, reason="Citation-first v4")
    plan = through_approval(transitions.plan_start(plan=plan, reason="internal users first", actor=owner))
    RolloutPlan.objects.filter(pk=plan.pk).update(stage_entered_at=timezone.now() - datetime.timedelta(minutes=3))
    key = sdk_key("walk telemetry")
    reset_store(None)  # the key store learns new keys at its next poll; this walk does not wait for it
    events = report(key, regression, lambda i: datetime.timedelta(minutes=1, seconds=i % 50))
    assert events_aggregate() == events

    # When the owner opens the plan
    page = as_user("owner")
    page.goto(plan_url(plan))

    # Then the latency band is red: its interval lies above the +20 % allowed, drawn and in words
    band = page.get_by_test_id("band-latency_p95")
    expect(band).to_have_attribute("data-verdict", "red")
    expect(band.locator("svg.band-chart.verdict-red polygon.band")).to_have_count(1)
    expect(band.get_by_test_id("band-message")).to_contain_text(re.compile(
        r"Latency \(p95\) is worse by \d+(\.\d+)? %–\d+(\.\d+)? % than the baseline with 95 % confidence "
        r"\(20 % worse allowed\): breached"))
    said = page.get_by_test_id("words-guardrail")
    expect(said).to_have_count(1)
    expect(said.locator("[data-status]")).to_have_attribute("data-status", "red")
    expect(page.get_by_test_id("words-did")).to_have_count(0)  # the sweep has not acted yet
    # and Advance is blocked with the same words
    advance = page.get_by_role("button", name="Advance to stage 2 (Beta accounts)")
    expect(advance).to_be_disabled()
    expect(page.locator("#blocked-advance")).to_contain_text("A guardrail is breached: latency_p95 is worse by")
    review_screenshot(page, "rollout_plan_red_band.png")
