"""The plan page: stages and what its reader may do, charts, sample sizes and guardrails from
telemetry, a query count that does not grow with decisions, and nothing for another project's
members."""

from __future__ import annotations

import datetime
import re
import uuid
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from flags.constants import Role
from flags.evaluation.engine import BUCKETS, bucket_of
from flags.services import membership_grant, sdk_key_create
from flags.snapshot_store import reset_store
from rollouts.models import ChangeRequest, RolloutPlan
from rollouts.plans import charts, design, measurement, transitions
from rollouts.plans.design import SPLIT_TOTAL
from telemetry import histogram
from telemetry.services import events_aggregate
from tests.factories import TEST_ACTOR
from tests.ofrep_client import call
from tests.rollouts.plans.support import (
    BASELINE,
    CANDIDATE,
    LATENCY_MIN_20,
    PROFILE,
    environment,
    flag,
    make_plan,
    plan_url,
    report,
)
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db


def test_page__draft__stages_and_start_button_for_the_owner_only(client: Any, catalog: Any) -> None:
    plan = make_plan()
    client.force_login(user("owner"))
    html = client.get(plan_url(plan)).content.decode()
    assert "1. Internal users" in html and "4. 50 %" in html
    assert "Start: stage 1 (Internal users)" in html and "Discard draft" in html
    client.force_login(user("auditor"))
    html = client.get(plan_url(plan)).content.decode()
    assert "Start: stage 1" not in html and "do not steer this plan" in html


def test_page__charts_samples_and_guardrails_from_telemetry(client: Any, catalog: Any) -> None:
    # Given a plan at stage 1 and 300 latencies per variant, the candidate's 10 % above the
    # baseline's: enough for the p95's confidence sequence to settle within the 20 % allowed
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    for _ in range(2):  # a batch holds at most 1,000 events: 150 exposures and outcomes per variant each
        report("staging", {BASELINE: [100.0] * 150, CANDIDATE: [110.0] * 150})
    # When a member opens the plan page
    client.force_login(user("pm"))
    html = client.get(plan_url(plan)).content.decode()
    # Then the latency chart has its band, judged green, and the per-variant lines below it
    chart = re.search(r'data-testid="chart-latency_p95">(.*?)</figure>', html, re.S).group(1)
    band = re.search(r'data-testid="band-latency_p95" data-verdict="(\w+)">(.*?)</details>', chart, re.S)
    assert band.group(1) == "green" and "verdict-green" in band.group(2) and "<polygon" in band.group(2)
    assert "Latency (p95) is worse by" in band.group(2) and "(20 % worse allowed): holds" in band.group(2)
    assert chart.count("<svg") == 2 and chart.index('class="chart band-chart') < chart.index('class="chart"')
    assert f"{CANDIDATE} 300 samples" in re.sub(r"<[^>]+>", "", chart)
    samples = re.search(r'data-testid="plan-samples">(.*?)</table>', html, re.S).group(1)
    assert re.search(rf"{BASELINE}.*?<td>300</td><td>300</td>", samples, re.S)
    guardrails = re.search(r'data-testid="plan-guardrails">(.*?)</table>', html, re.S).group(1)
    assert 'data-status="green"' in guardrails and "at most 1.2 × baseline" in guardrails
    # And the decision in words names the metric and says the guardrail holds
    words = re.search(r'data-testid="plan-words">(.*?)</ul>', html, re.S).group(1)
    assert re.search(r'data-testid="words-guardrail"><span class="badge on" data-status="green"[^>]*>● green</span>\s*'
                     r"Latency \(p95\) is worse by [\d.]+ %–[\d.]+ % than the baseline with 95 % confidence", words)


def test_page__band_follows_the_stage_evidence_from_its_entry(client: Any, catalog: Any) -> None:
    # Given a plan at stage 1 with a clear regression (the candidate 1.5 × the baseline),
    # reported in two minutes of the stage: too little to judge in the first, enough by the second
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    RolloutPlan.objects.filter(pk=plan.pk).update(stage_entered_at=timezone.now() - datetime.timedelta(minutes=5))
    report("staging", {BASELINE: [100.0] * 40, CANDIDATE: [150.0] * 40}, minutes_ago=3)
    for _ in range(4):  # a batch holds at most 1,000 events
        report("staging", {BASELINE: [100.0] * 100, CANDIDATE: [150.0] * 100}, minutes_ago=1)
    # When the page is read
    client.force_login(user("pm"))
    html = client.get(plan_url(plan)).content.decode()
    band = re.search(r'data-testid="band-latency_p95" data-verdict="(\w+)">(.*?)</details>', html, re.S)
    # Then the band is red at the end, and its table has a check per minute with data, cumulative:
    # 40 samples per variant first, unbounded; 440 at the end, wholly beyond +20 %
    assert band.group(1) == "red" and "verdict-red" in band.group(2)
    rows = re.findall(r"<tr><td>[^<]+</td><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td><td>(\d+)</td><td>(\d+)</td></tr>",
                      band.group(2))
    assert [(int(c), int(b)) for *_, c, b in rows] == [(40, 40), (440, 440)]
    assert rows[0][1:3] == ("no lower bound yet", "no upper bound yet")
    low = float(rows[-1][1].strip("+ %"))
    # (the estimate is the ratio of the p95s read from the log-scale histograms' bins)
    estimate = histogram.representative(histogram.bin_of(150.0)) / histogram.representative(histogram.bin_of(100.0)) - 1
    assert low > 20 and rows[-1][0] == f"+{100 * estimate:.1f} %"
    assert "allowed: 20 % worse" in band.group(2)


def _post(env_key: str, events: list[dict[str, Any]]) -> None:
    key = sdk_key_create(environment=environment(env_key), name=f"tests-{uuid.uuid4().hex[:6]}", actor=TEST_ACTOR)[1]
    reset_store(None)
    response = call("POST", "/api/v1/events", body={"batch_id": uuid.uuid4().hex, "events": events},
                    headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200 and response.json()["accepted"] == len(events), response.body
    events_aggregate()


def test_page__words__primary_metric_and_fallback_share(client: Any, catalog: Any) -> None:
    # Given a plan at stage 1; of 200 units assigned the candidate 50 were served the baseline
    # (an AI fallback), and the primary metric resolves 20 % of the baseline's cases but 80 % of
    # the candidate's
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    at = timezone.now().isoformat()
    events: list[dict[str, Any]] = []
    for variant, resolved_share in ((BASELINE, 0.2), (CANDIDATE, 0.8)):
        for i in range(200):
            unit = f"{variant}-{i}"
            served = BASELINE if variant == CANDIDATE and i < 50 else variant
            events += [{"kind": "exposure", "flag": PROFILE, "variant": variant, "served": served, "unit": unit,
                        "time": at},
                       {"kind": "outcome", "metric": "resolved_without_escalation",
                        "value": 1.0 if i % 10 < resolved_share * 10 else 0.0, "unit": unit, "time": at}]
    _post("staging", events)
    # When the page is read
    client.force_login(user("pm"))
    html = client.get(plan_url(plan)).content.decode()
    words = re.search(r'data-testid="plan-words">(.*?)</ul>', html, re.S).group(1)
    # Then the primary metric is better, in words with its name; the candidate's fallbacks are 25 %
    primary = re.search(r'data-testid="words-primary">(.*?)</li>', words, re.S).group(1)
    assert re.search(r"<span class=\"badge on\">better</span>Primary metric: Resolved without escalation is better "
                     r"by (at least )?[\d.]+ %", primary)
    assert f"{CANDIDATE}: 25.0 % of exposures served something else (AI fallbacks)" in words
    assert f"{BASELINE}:" not in words
    # And the primary metric's band is green (better), on a relative scale with 0 % marked
    band = re.search(r'data-testid="band-resolved_without_escalation" data-verdict="(\w+)">(.*?)</details>', html, re.S)
    assert band.group(1) == "green" and 'class="zero"' in band.group(2)


def test_page__rolled_back__says_what_the_plan_did_and_why(client: Any, catalog: Any) -> None:
    # Given a running plan rolled back by its owner for a reason naming the metric's key
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    transitions.plan_rollback(plan=plan, reason="latency_p95 is worse by 18–31 % than the baseline", actor=user("owner"))
    # When the page is read
    client.force_login(user("pm"))
    html = client.get(plan_url(plan)).content.decode()
    # Then the words say it with the metric's name, what was done and by whom
    did = re.search(r'data-testid="words-did">(.*?)</li>', html, re.S).group(1)
    assert did.startswith(f"Latency (p95) is worse by 18–31 % than the baseline; rolled back to {BASELINE} by owner on ")


def test_page__resumed_after_a_pause__the_old_pause_is_not_the_news(client: Any, catalog: Any) -> None:
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    transitions.plan_pause(plan=plan, reason="looking at latency", actor=user("owner"))
    client.force_login(user("pm"))
    assert "looking at latency; paused at stage 1 (Internal users)" in client.get(plan_url(plan)).content.decode()
    transitions.plan_resume(plan=plan, reason="fine", actor=user("owner"))
    assert 'data-testid="words-did"' not in client.get(plan_url(plan)).content.decode()


def test_page__queries_do_not_grow_with_outcomes_or_band_points(client: Any, catalog: Any) -> None:
    # Given a running plan with outcomes in one minute of its stage
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    RolloutPlan.objects.filter(pk=plan.pk).update(stage_entered_at=timezone.now() - datetime.timedelta(minutes=20))
    report("staging", {BASELINE: [100.0] * 5, CANDIDATE: [110.0] * 5}, minutes_ago=15)
    client.force_login(user("pm"))
    with CaptureQueriesContext(connection) as before:
        html = client.get(plan_url(plan)).content.decode()
    assert html.count('class="estimate-point"') == 1
    # When outcomes arrive in four more minutes (four more checks on each band)
    for minutes_ago in (12, 9, 6, 3):
        report("staging", {BASELINE: [100.0] * 5, CANDIDATE: [110.0] * 5}, minutes_ago=minutes_ago)
    with CaptureQueriesContext(connection) as after:
        html = client.get(plan_url(plan)).content.decode()
    # Then the page draws them in the same number of queries
    assert html.count('class="estimate-point"') == 5
    assert len(after) == len(before)


def test_page__queries_do_not_grow_with_decisions(client: Any, catalog: Any) -> None:
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    client.force_login(user("pm"))
    with CaptureQueriesContext(connection) as before:
        client.get(plan_url(plan))
    for i in range(4):
        transitions.plan_investigate(plan=plan, reason=f"look {i}", actor=user("pm"))
        transitions.plan_resolve(plan=plan, reason=f"fine {i}", actor=user("pm"))
    with CaptureQueriesContext(connection) as after:
        client.get(plan_url(plan))
    assert len(after) == len(before)


def test_other_project_member__plan_is_404(client: Any, catalog: Any, make_user: Any) -> None:
    plan = make_plan()
    from tests.factories import make_project
    other = make_project("elsewhere")
    stranger = make_user("stranger")
    membership_grant(project=other, user=stranger, role=Role.EDITOR, actor=TEST_ACTOR)
    client.force_login(stranger)
    assert client.get(plan_url(plan)).status_code == 404
    assert client.post(plan_url(plan, "rollback"), {"reason": "x"}).status_code == 404
    assert RolloutPlan.objects.get(pk=plan.pk).status == "draft"
    assert not ChangeRequest.objects.exists()



def test_page__sample_ratio_mismatch__warns_the_evidence_cannot_be_trusted(client: Any, catalog: Any) -> None:
    # Given a plan at stage 4 (50 % split) whose application loses the exposures of 40 % of the
    # units on the candidate's side of the split (which side: the unit's hash bucket)
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    for reason in ("beta", "5 %", "50 %"):
        transitions.plan_advance(plan=plan, reason=reason, actor=user("owner"))
    plan.refresh_from_db()
    assert plan.stage_index == 3 and plan.pending_change_request_id is None
    first_candidate_bucket = BUCKETS * (SPLIT_TOTAL - 50_000) // SPLIT_TOTAL
    at = timezone.now().isoformat()
    events, candidate_side = [], 0
    for i in range(800):
        unit = f"acct-srm-{i}"
        if bucket_of(plan.flag.key, plan.flag.salt, unit) >= first_candidate_bucket:
            candidate_side += 1
            if candidate_side % 5 in (1, 2):  # two in five never reported
                continue
            variant = CANDIDATE
        else:
            variant = BASELINE
        events.append({"kind": "exposure", "flag": PROFILE, "variant": variant, "served": variant, "unit": unit,
                       "time": at})
    _post("staging", events)
    # When the page is read
    client.force_login(user("pm"))
    html = client.get(plan_url(plan)).content.decode()
    # Then a warning above the evidence says it cannot be trusted, and why
    warning = re.search(r'<p class="srm-warning" role="alert" data-testid="words-sample-ratio">(.*?)</p>', html, re.S)
    assert warning is not None
    assert "Sample ratio mismatch: the stage's evidence cannot be trusted." in warning.group(1)
    assert "units are being lost or counted twice on one side" in warning.group(1)


def test_page__each_band_ends_on_the_stage_evidence__p95_mean_and_rate(client: Any, catalog: Any) -> None:
    # Given a plan whose stage judges a p95 (relative), a mean (relative) and a rate (absolute),
    # with outcomes of each over three minutes of its stage, the candidate 10 % above the baseline
    guardrails = [LATENCY_MIN_20,
                  {"metric": "estimated_cost_per_case", "kind": "relative_max", "threshold": 1.2, "min_samples": 20},
                  {"metric": "correction_rate", "kind": "absolute_max", "threshold": 0.5, "min_samples": 20}]
    plan = design.plan_create(flag=flag(), environment=environment("staging"), baseline=BASELINE, candidate=CANDIDATE,
                              stages=[{"name": "Internal users", "segments": ["internal_users"], "percentage": 0,
                                       "min_bake_minutes": 0, "guardrails": guardrails}],
                              actor=user("owner"), reason="v4 is ready")
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    RolloutPlan.objects.filter(pk=plan.pk).update(stage_entered_at=timezone.now() - datetime.timedelta(minutes=10))
    for minutes_ago in (7, 5, 3):
        at = (timezone.now() - datetime.timedelta(minutes=minutes_ago)).isoformat()
        events: list[dict[str, Any]] = []
        for variant, slower in ((BASELINE, 1.0), (CANDIDATE, 1.1)):
            for i in range(100):  # 300 outcomes per variant in all: enough for the p95's interval to close
                unit = f"{variant}-{minutes_ago}-{i}"
                events += [{"kind": "exposure", "flag": PROFILE, "variant": variant, "served": variant, "unit": unit,
                            "time": at},
                           {"kind": "outcome", "metric": "latency_p95", "value": slower * (400 + i % 7), "unit": unit,
                            "time": at},
                           {"kind": "outcome", "metric": "estimated_cost_per_case", "value": slower * (0.02 + (i % 5) / 1000),
                            "unit": unit, "time": at},
                           {"kind": "outcome", "metric": "correction_rate", "value": 1.0 if i % 10 == 0 else 0.0,
                            "unit": unit, "time": at}]
        _post("staging", events)
    # When the page is read
    plan.refresh_from_db()
    evidence = {g["metric"]: g for g in measurement.plan_evidence(plan)["guardrails"]}
    client.force_login(user("pm"))
    html = client.get(plan_url(plan)).content.decode()
    # Then each band has a check per minute with outcomes, and its last one is the stage's evidence
    # as the guardrail table judges it: the same interval, samples and verdict
    for metric, relative, unit in (("latency_p95", True, "ms"), ("estimated_cost_per_case", True, "USD"),
                                   ("correction_rate", False, "%")):
        judged = evidence[metric]
        band = re.search(rf'data-testid="band-{metric}" data-verdict="(\w+)">(.*?)</details>', html, re.S)
        assert band.group(1) == judged["status"], (metric, judged["message"])
        rows = re.findall(r"<tr><td>[^<]+</td><td>[^<]+</td><td>([^<]+)</td><td>([^<]+)</td><td>(\d+)</td>"
                          r"<td>(\d+)</td></tr>", band.group(2))
        assert len(rows) == 3, metric
        low, high = judged["interval_low"], judged["interval_high"]
        assert low is not None and high is not None and low < high, (metric, judged["message"])
        if relative and low is not None and low <= -1:
            low = None
        assert rows[-1] == (charts.band_end(low, "%" if relative else unit, relative, upper=False),
                            charts.band_end(high, "%" if relative else unit, relative, upper=True),
                            str(judged["candidate_samples"]), str(judged["baseline_samples"])), metric
