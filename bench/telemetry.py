"""Telemetry benchmark: events/s accepted by `POST /api/v1/events` (gunicorn, 2 sync workers,
PostgreSQL, batches of 500 from client processes on the same machine), then events/s folded
into the aggregates by `telemetry.services.events_aggregate` over what was ingested.
Goals: ingest at least 5,000 events/s; aggregation keeps up with that rate (≥ 5,000 events/s).

    python bench/telemetry.py   # BENCH_TELEMETRY_DATABASE_URL defaults to …/featureops_bench_telemetry
"""

from __future__ import annotations

import datetime
import http.client
import json
import multiprocessing
import os
import random
import statistics
import time
import uuid

from _database import use_database

DATABASE_URL = use_database("BENCH_TELEMETRY_DATABASE_URL", "featureops_bench_telemetry")

BATCH = 500
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "4"))
FLAGS = {"support_assistant_profile": ["baseline_v3", "citation_first_v4"],
         "support_agent_tool_mode": ["read_only", "approval_required"]}
METRICS = ["latency_p95", "resolved_without_escalation", "estimated_cost_per_case", "correction_rate"]


def prepare_database() -> str:
    """Create and migrate the bench database, load the demo and its metrics, empty the
    telemetry tables, and return a production SDK key."""
    import _setup

    _setup.create_database(DATABASE_URL)
    from django.db import connection

    from audit.services import SystemActor
    from flags import services
    from flags.demo import seed_demo
    from flags.models import Environment
    from telemetry.demo import seed_demo_metrics

    project, _ = seed_demo()
    seed_demo_metrics(project)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE telemetry_event, telemetry_eventbatch, telemetry_unitexposure, "
                       "telemetry_exposurebucket, telemetry_outcomebucket, telemetry_aggregationcursor")
    production = Environment.objects.get(project=project, key="production")
    return services.sdk_key_create(environment=production, name="bench-telemetry", actor=SystemActor("bench"))[1]


def _bodies(seed: int) -> list[str]:
    """Batch bodies with a placeholder id: 80 % exposures (5 % served ≠ assigned), 20 % outcomes."""
    rng = random.Random(seed)
    now = datetime.datetime.now(datetime.UTC)
    bodies = []
    for _ in range(20):
        events = []
        for _ in range(BATCH):
            unit = f"acct-{rng.randrange(200_000)}"
            when = (now - datetime.timedelta(seconds=rng.uniform(0, 600))).isoformat()
            if rng.random() < 0.8:
                flag = rng.choice(list(FLAGS))
                variant = rng.choice(FLAGS[flag])
                served = FLAGS[flag][0] if rng.random() < 0.05 else variant
                events.append({"kind": "exposure", "flag": flag, "variant": variant, "served": served, "unit": unit,
                               "time": when})
            else:
                events.append({"kind": "outcome", "metric": rng.choice(METRICS), "value": rng.lognormvariate(5, 1),
                               "unit": unit, "time": when})
        bodies.append(json.dumps({"batch_id": "BATCH_ID", "events": events}))
    return bodies


def _client(port: int, key: str, seed: int, start_at: float, results: multiprocessing.Queue) -> None:
    bodies = _bodies(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    accepted = requests = errors = 0
    latencies = []
    while time.time() < start_at:
        time.sleep(0.01)
    deadline = start_at + SECONDS
    n = 0
    while time.time() < deadline:
        body = bodies[n % len(bodies)].replace("BATCH_ID", uuid.uuid4().hex, 1)
        n += 1
        began = time.perf_counter()
        conn.request("POST", "/api/v1/events", body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        latencies.append(time.perf_counter() - began)
        requests += 1
        if response.status == 200:
            accepted += json.loads(payload)["accepted"]
        else:
            errors += 1
    results.put((accepted, requests, errors, latencies))


def main() -> None:
    key = prepare_database()
    from telemetry.models import Event
    from telemetry.services import events_aggregate
    from tests.servers import gunicorn

    workers = int(os.environ.get("BENCH_WORKERS", "2"))
    print(f"machine: {os.cpu_count()} cores; gunicorn {workers} sync workers; PostgreSQL; {CLIENTS} client "
          f"processes on the same cores; batches of {BATCH} events for {SECONDS:.0f} s")
    with gunicorn(DATABASE_URL, workers=workers) as base:
        port = int(base.rsplit(":", 1)[1])
        results: multiprocessing.Queue = multiprocessing.Queue()
        start_at = time.time() + 3  # the clients build their bodies first
        clients = [multiprocessing.Process(target=_client, args=(port, key, n, start_at, results))
                   for n in range(CLIENTS)]
        for client in clients:
            client.start()
        outcomes = [results.get(timeout=SECONDS + 60) for _ in clients]
        for client in clients:
            client.join()
    accepted = sum(o[0] for o in outcomes)
    requests = sum(o[1] for o in outcomes)
    errors = sum(o[2] for o in outcomes)
    latencies = sorted(x for o in outcomes for x in o[3])
    ingest_rate = accepted / SECONDS
    stored = Event.objects.count()
    print(f"ingest: {accepted} events accepted in {requests} batches ({errors} errors), {stored} stored: "
          f"{ingest_rate:,.0f} events/s (goal ≥ 5,000); batch latency p50 "
          f"{statistics.median(latencies) * 1000:.1f} ms, p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms")
    began = time.perf_counter()
    folded = events_aggregate(budget_seconds=3600)
    elapsed = time.perf_counter() - began
    aggregate_rate = folded / elapsed
    print(f"aggregation: {folded} events in {elapsed:.2f} s: {aggregate_rate:,.0f} events/s, one process "
          f"(goal: keeps up with 5,000 events/s: {aggregate_rate / 5000:.1f}×; "
          f"{aggregate_rate / ingest_rate:.2f}× this run's ingest rate)")
    print(json.dumps({"ingest_events_per_s": round(ingest_rate), "aggregate_events_per_s": round(aggregate_rate),
                      "batch_p50_ms": round(statistics.median(latencies) * 1000, 1), "errors": errors}))


if __name__ == "__main__":
    main()
