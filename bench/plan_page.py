"""Plan page benchmark: the rollout plan page of `support_assistant_profile` in production,
rendered with 10,000,000 raw telemetry events stored over the plan's 14 days.
Goal: the page renders in under 200 ms (server time through `django.test.Client`, median
and p95 of 25 renders, logged in as the demo user `pm`), in a fixed number of queries.

    python bench/plan_page.py   # BENCH_PLAN_PAGE_DATABASE_URL defaults to …/featureops_bench_plan_page

Preparation (once; a database that already holds the events and their aggregates is reused):
the demo project and metrics; a plan from the seed template started, and advanced through
internal users → beta accounts → 5 % → 50 % with each production step approved by `pm` and
`lead` and applied, then its timestamps moved back (plan, stage entry, release decisions)
so that it started 14 days ago and entered the 50 % stage 8 days ago; 10,000,000 raw
events written with COPY into `telemetry_event`, spread evenly over those 14 days and
following the stages (internal units get the candidate from the start, beta units from
stage 2, 5 % then 50 % of the other 200,000 accounts after that): per support case one
exposure (2 % of candidate exposures served the baseline), outcomes for latency_p95,
resolved_without_escalation, estimated_cost_per_case and correction_rate, for one case in
four citation_failure_rate, for one in five an exposure of `support_agent_tool_mode`;
outcomes carry no variant, so aggregation attributes them through the unit. The aggregates
(minute buckets, hourly and daily roll-ups, `UnitExposure`) are built by the real
`telemetry.services.events_aggregate` (about 7 minutes; an interrupted run resumes), then
VACUUM ANALYZE. BENCH_PLAN_PAGE_EVENTS changes the number of events (with another database
URL, to try the script quickly).

Besides the page it times each telemetry read the page depends on (the stand-in for the
page while `rollouts:plan_detail` did not exist), and the same outcome reads done from the
per-minute rows alone, as they were before the roll-ups.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import statistics
import time
from typing import Any

from _database import database_exists, drop_database, use_database

DATABASE_URL = use_database("BENCH_PLAN_PAGE_DATABASE_URL", "featureops_bench_plan_page", test_client=True)

EVENTS = int(os.environ.get("BENCH_PLAN_PAGE_EVENTS", "10000000"))
RENDERS = 25
DAYS = 14
PROFILE, TOOL_MODE = "support_assistant_profile", "support_agent_tool_mode"
BASELINE, CANDIDATE = "baseline_v3", "citation_first_v4"
ACCOUNTS, INTERNAL, BETA = 200_000, 50, 3_000
# When each stage was entered, before "now" (odd minutes, so windows have partial-hour edges).
STAGE_AGO = [datetime.timedelta(days=14) - datetime.timedelta(minutes=7),
             datetime.timedelta(days=13, hours=7, minutes=13),
             datetime.timedelta(days=11, hours=3, minutes=41),
             datetime.timedelta(days=8, hours=2, minutes=17)]
CANDIDATE_PERCENT = [0, 0, 5, 50]  # of the other accounts, per stage
COPY_COLUMNS = ("txid, environment_id, kind, flag_id, variant, served, metric_id, value, unit, occurred_at, "
                "received_at")


def _state() -> str:
    """"ready" (events aggregated, plan made), "copied" (events written, aggregation not
    finished: it resumes) or "" (build it all)."""
    import psycopg

    if not database_exists(DATABASE_URL):
        return ""
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        try:
            plans = conn.execute("SELECT count(*) FROM rollouts_rolloutplan").fetchone()[0]
            stored = conn.execute("SELECT count(*) FROM (SELECT 1 FROM telemetry_event LIMIT %s) e",
                                  (EVENTS,)).fetchone()[0]
            processed = conn.execute("SELECT events_processed FROM telemetry_aggregationcursor").fetchone()
        except psycopg.errors.UndefinedTable:
            return ""
    if not plans or stored < EVENTS:
        return ""
    return "ready" if processed and processed[0] >= EVENTS else "copied"


def _make_plan(now: datetime.datetime) -> Any:
    """The plan, started and advanced through approvals to its 50 % stage, then backdated."""
    from django.contrib.auth import get_user_model

    from flags.models import Environment, Flag
    from rollouts.change_control import applying, approving
    from rollouts.models import ChangeRequest, ReleaseDecision, RolloutPlan
    from rollouts.plans import design, transitions

    users = {u.username: u for u in get_user_model().objects.filter(username__in=["owner", "pm", "lead"])}
    production = Environment.objects.get(project__key="support-assistant", key="production")
    plan = design.plan_from_template(flag=Flag.objects.get(key=PROFILE), environment=production, candidate=CANDIDATE,
                                    actor=users["owner"], reason="Citation-first v4 is ready")
    plan = transitions.plan_start(plan=plan, reason="Internal users first", actor=users["owner"])
    for stage in range(1, len(STAGE_AGO)):
        RolloutPlan.objects.filter(pk=plan.pk).update(stage_entered_at=now - datetime.timedelta(days=20))
        plan = transitions.plan_advance(plan=RolloutPlan.objects.get(pk=plan.pk), reason=f"Stage {stage} baked",
                                  actor=users["owner"])
        if plan.pending_change_request is not None:
            request = plan.pending_change_request
            for approver in ("pm", "lead"):
                if ChangeRequest.objects.get(pk=request.pk).status == ChangeRequest.Status.PENDING:
                    approving.change_request_approve(change_request=request, actor=users[approver])
            applying.change_request_apply(change_request=request, actor=users["owner"])
            plan = transitions.plan_sync(plan)
        assert plan.stage_index == stage, f"the plan did not reach stage {stage + 1}"
    # Fake the history: each decision when its stage was entered (requests half an hour before).
    for decision in ReleaseDecision.objects.filter(plan=plan).order_by("id"):
        entered = now - STAGE_AGO[decision.to_stage]
        requested = decision.change_request_id is not None and decision.actor_label != str(transitions.PLAN_SYNC)
        ReleaseDecision.objects.filter(pk=decision.pk).update(
            created_at=entered - datetime.timedelta(minutes=30) if requested else entered)
    RolloutPlan.objects.filter(pk=plan.pk).update(created_at=now - STAGE_AGO[0] - datetime.timedelta(minutes=20),
                                                  stage_entered_at=now - STAGE_AGO[-1])
    return RolloutPlan.objects.get(pk=plan.pk)


def _event_lines(now: datetime.datetime, ids: dict[str, int]) -> Any:
    """COPY text lines, EVENTS of them, oldest case first, in blocks of about 50,000."""
    rng = random.Random(8)
    first = now - datetime.timedelta(days=DAYS)
    span = (now - first).total_seconds()
    cases = int(EVENTS / 5.45) + 1  # 109 events per 20 cases
    env, profile, tool_mode = ids["environment"], ids["profile"], ids["tool_mode"]
    written = 0
    block: list[str] = []
    stage_ends = [now - ago for ago in STAGE_AGO]
    for case in range(cases):
        when = first + datetime.timedelta(seconds=(case + rng.random()) * span / cases)
        draw = rng.random()
        if draw < 0.02:
            unit, group, n = f"acct-internal-{rng.randrange(INTERNAL):03d}", 0, 0
        elif draw < 0.10:
            unit, group, n = f"acct-beta-{rng.randrange(BETA):04d}", 1, 0
        else:
            n = rng.randrange(ACCOUNTS)
            unit, group = f"acct-{n:06d}", 2
        stage = sum(when >= end for end in stage_ends) - 1
        candidate = stage >= group and (group < 2 or n % 100 < CANDIDATE_PERCENT[stage])
        variant = CANDIDATE if candidate else BASELINE
        served = BASELINE if candidate and rng.random() < 0.02 else variant
        stamp = when.isoformat()
        received = (when + datetime.timedelta(seconds=1)).isoformat()
        rows = [f"{env}\texposure\t{profile}\t{variant}\t{served}\t\\N\t\\N\t{unit}\t{stamp}\t{received}"]
        if case % 5 == 0:
            mode = "read_only" if n % 2 else "approval_required"
            rows.append(f"{env}\texposure\t{tool_mode}\t{mode}\t{mode}\t\\N\t\\N\t{unit}\t{stamp}\t{received}")
        later = (when + datetime.timedelta(seconds=rng.uniform(1, 120))).isoformat()
        slow = 1.08 if candidate else 1.0
        values = [("latency_p95", rng.lognormvariate(7.09, 0.35) * slow),
                  ("resolved_without_escalation", float(rng.random() < (0.78 if candidate else 0.72))),
                  ("estimated_cost_per_case", rng.lognormvariate(-3.2, 0.3) * (1.1 if candidate else 1.0)),
                  ("correction_rate", float(rng.random() < (0.07 if candidate else 0.08)))]
        if case % 4 == 0:
            values.append(("citation_failure_rate", float(rng.random() < (0.02 if candidate else 0.03))))
        rows += [f"{env}\toutcome\t\\N\t\t\t{ids[key]}\t{value!r}\t{unit}\t{later}\t{received}"
                 for key, value in values]
        # One transaction id per 500 events, as ingest gives each batch its own.
        rows = rows[:EVENTS - written]
        block.extend(f"{1 + (written + i) // 500}\t{row}" for i, row in enumerate(rows))
        written += len(rows)
        if len(block) >= 50_000 or written >= EVENTS:
            yield block
            block = []
        if written >= EVENTS:
            return


def prepare() -> None:
    import _setup

    state = _state()
    if state == "ready":
        print("database prepared earlier: reused")
        return
    began = time.perf_counter()
    if state != "copied":
        drop_database(DATABASE_URL)  # created again, empty, just below
    _setup.create_database(DATABASE_URL)
    from django.db import connection

    from telemetry.models import AggregationCursor
    from telemetry.services import events_aggregate

    if state != "copied":
        _write_events()
    else:
        print("events written earlier: aggregation resumes")
    started = time.perf_counter()
    done = AggregationCursor.objects.values_list("events_processed", flat=True).first() or 0
    folded = done
    while folded < EVENTS:
        if not events_aggregate(chunk_size=20_000, budget_seconds=60):
            raise SystemExit("aggregation stopped early")
        folded = AggregationCursor.objects.values_list("events_processed", flat=True).get()
        print(f"  aggregated {folded:,} events, {(folded - done) / (time.perf_counter() - started):,.0f} events/s",
              flush=True)
    aggregation = time.perf_counter() - started
    connection.close()
    import psycopg

    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"prepared in {time.perf_counter() - began:.0f} s (aggregation {aggregation:.0f} s, "
          f"{(folded - done) / aggregation:,.0f} events/s)")


def _write_events() -> None:
    """The demo, the plan, and the raw events by COPY (then ANALYZE, so that aggregation's
    watermark query is planned for millions of rows)."""
    from django.db import connection

    from flags.demo import seed_demo
    from flags.models import Environment, Flag
    from telemetry.demo import seed_demo_metrics
    from telemetry.models import Metric

    project, _ = seed_demo()
    seed_demo_metrics(project)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    plan = _make_plan(now)
    ids: dict[str, int] = {key: pk for pk, key in Metric.objects.filter(project=project).values_list("id", "key")}
    ids |= {"environment": Environment.objects.get(project=project, key="production").pk,
            "profile": Flag.objects.get(key=PROFILE).pk, "tool_mode": Flag.objects.get(key=TOOL_MODE).pk}
    print(f"plan {plan.pk} at stage {plan.stage_index + 1}, started {STAGE_AGO[0]} ago; writing {EVENTS:,} events")
    began = time.perf_counter()
    raw = connection.connection
    copied = 0
    with raw.cursor() as cursor:
        with cursor.copy(f"COPY telemetry_event ({COPY_COLUMNS}) FROM STDIN") as copy:
            for block in _event_lines(now, ids):
                copy.write("\n".join(block) + "\n")
                copied += len(block)
        raw.commit()
        cursor.execute("ANALYZE telemetry_event")
    raw.commit()
    print(f"  COPY: {copied:,} events in {time.perf_counter() - began:.0f} s")


def _timed(call: Any, repeat: int) -> tuple[float, float, int]:
    """(median ms, p95 ms, queries of one call)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            began = time.perf_counter()
            call()
            times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))], len(queries)


def _minute_only(plan: Any, start: datetime.datetime, end: datetime.datetime, keys: list[str],
                 bucket_minutes: int) -> None:
    """The evidence outcome read and the series reads as they were before the roll-ups:
    every minute row fetched and merged in Python."""
    from telemetry import histogram
    from telemetry.models import Metric, OutcomeBucket

    metrics = dict(Metric.objects.filter(project_id=plan.project_id, key__in=keys).values_list("id", "kind"))
    scope = {"flag_id": plan.flag_id, "environment_id": plan.environment_id}
    merged: dict[tuple, list[Any]] = {}
    for variant, metric_id, count, total, hist in OutcomeBucket.objects.filter(
            **scope, metric_id__in=list(metrics), bucket__gte=plan.stage_entered_at, bucket__lt=end).values_list(
            "variant", "metric_id", "count", "total", "histogram"):
        slot = merged.setdefault((variant, metric_id), [0, 0.0, {}])
        slot[0], slot[1] = slot[0] + count, slot[1] + total
        histogram.merge_into(slot[2], hist)
    width = datetime.timedelta(minutes=bucket_minutes)
    for metric_id, kind in metrics.items():
        grouped: dict[tuple, list[Any]] = {}
        for bucket, variant, count, total, hist in OutcomeBucket.objects.filter(
                **scope, metric_id=metric_id, bucket__gte=start, bucket__lt=end).values_list(
                "bucket", "variant", "count", "total", "histogram"):
            slot = grouped.setdefault((start + width * ((bucket - start) // width), variant), [0, 0.0, {}])
            slot[0], slot[1] = slot[0] + count, slot[1] + total
            if kind == "p95":
                histogram.merge_into(slot[2], hist)


def measure() -> dict[str, Any]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import NoReverseMatch, reverse
    from django.utils import timezone

    from flags.demo import DEMO_PASSWORD
    from rollouts.models import RolloutPlan
    from rollouts.plans import design, measurement
    from telemetry.models import (
        DailyOutcomeBucket,
        Event,
        ExposureBucket,
        HourlyOutcomeBucket,
        OutcomeBucket,
        UnitExposure,
    )
    from telemetry.selectors import evidence, series

    plan = RolloutPlan.objects.select_related("flag").get(flag__key=PROFILE, environment__key="production")
    stages = design.plan_stages(plan)
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'telemetry_event'")
        stored = cursor.fetchone()[0]
    print(f"stored: ~{stored:,} events; {ExposureBucket.objects.count():,} minute exposure rows, "
          f"{OutcomeBucket.objects.count():,} minute, {HourlyOutcomeBucket.objects.count():,} hourly and "
          f"{DailyOutcomeBucket.objects.count():,} daily outcome rows, {UnitExposure.objects.count():,} units × variants")
    assert Event.objects.order_by("-id").values_list("id", flat=True).first() >= EVENTS * 0.99

    results: dict[str, Any] = {}
    try:
        url = reverse("rollouts:plan_detail", kwargs={"project_key": "support-assistant", "pk": plan.pk})
    except NoReverseMatch:
        url = None
    if url:
        client = Client()
        assert client.login(username="pm", password=DEMO_PASSWORD)
        for _ in range(3):
            assert client.get(url).status_code == 200
        times, query_counts = [], []
        for _ in range(RENDERS):
            with CaptureQueriesContext(connection) as queries:
                began = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200, response.status_code
            query_counts.append(len(queries))
        times.sort()
        results["page"] = {"median_ms": round(statistics.median(times), 1),
                           "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
                           "queries": sorted(set(query_counts)), "bytes": len(response.content)}
        print(f"plan page {url}: median {results['page']['median_ms']} ms, p95 {results['page']['p95_ms']} ms "
              f"over {RENDERS} renders (goal < 200 ms); {query_counts[0]} queries per render")
    else:
        print("rollouts:plan_detail does not exist yet: timing the telemetry reads the page will make")

    # The telemetry reads of the page, one by one (and the stand-in for the page).
    now = timezone.now()
    start = plan.created_at.replace(second=0, microsecond=0)
    keys = [plan.flag.primary_metric] + [g["metric"] for g in stages[plan.stage_index].guardrails]
    entered = [now - ago for ago in STAGE_AGO] + [now]
    reads: dict[str, tuple[float, float, int]] = {}
    for index, stage in enumerate(stages[:len(STAGE_AGO)]):
        window_keys = sorted({plan.flag.primary_metric} | {g["metric"] for g in stage.guardrails})
        reads[f"evidence, stage {index + 1} window"] = _timed(lambda i=index, k=window_keys: evidence(
            flag_id=plan.flag_id, environment_id=plan.environment_id, start=entered[i].replace(second=0),
            end=entered[i + 1], metric_keys=k), 7)
    reads["plan_evidence (current stage)"] = _timed(lambda: measurement.plan_evidence(plan, stages=stages), 7)
    for key in keys:
        reads[f"series {key}, 360 min × 14 days"] = _timed(lambda k=key: series(
            flag_id=plan.flag_id, environment_id=plan.environment_id, metric_key=k, start=start, end=now,
            bucket_minutes=360), 7)
    total_median = sum(r[0] for r in reads.values())
    for name, (median, p95, queries) in reads.items():
        print(f"  {name}: median {median:.1f} ms, p95 {p95:.1f} ms, {queries} queries")
    print(f"  all of the above: {total_median:.1f} ms")
    before = _timed(lambda: _minute_only(plan, start, now, keys, 360), 3)
    print(f"  the current stage's outcome evidence and the {len(keys)} series from minute rows alone (as before "
          f"the roll-ups): median {before[0]:.0f} ms")
    results["reads"] = {name: round(r[0], 1) for name, r in reads.items()}
    results["reads_total_ms"] = round(total_median, 1)
    results["minute_only_ms"] = round(before[0], 1)
    return results


def main() -> None:
    import _setup

    print(f"machine: {_setup.machine()}; PostgreSQL; {EVENTS:,} events over {DAYS} days")
    prepare()
    print(json.dumps(measure()))


if __name__ == "__main__":
    main()
