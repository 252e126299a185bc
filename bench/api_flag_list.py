"""Management API flag list benchmark (issue 17): `GET /api/v1/projects/<p>/flags?limit=200`,
each flag with its variations and its targeting in three environments.
Goal: under 100 ms p95 server time per page of 200 flags, in a number of SQL queries that does
not grow with the number of flags.

    python bench/api_flag_list.py   # BENCH_API_DATABASE_URL, default .../featureops_bench_api

Builds (once; a database that already holds them is reused) two projects on PostgreSQL:
`bench-1000` with 1,000 flags and `bench-10` with 10, each flag with 3 variations, 3 tags of 8,
an owner, guardrail metrics, and targeting in development, staging and a governed production:
on, 5 individual targets, 3 rules (a segment, two attributes, a version with a split) and a
split default. The rows are written in bulk (1,000 flags through the services would take
minutes) and their targeting is checked by the engine's own schema first.

Then, through `django.test.Client` in-process (server time, no network), with a personal
read token of a viewer of both projects: first, untimed, one walk through every page, checking
each flag comes once and in order, as the single-flag endpoint shows it; then paging through all
1,000 flags by `next_cursor` (5 pages of 200, ROUNDS times), one first page of 200 (SINGLE
times), and the SQL queries of a page: first, middle (by cursor) and last of 1,000 flags, the one
page of 10 flags, and pages of 10 and 50 of the 1,000. Exits 1 when a goal is missed.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import statistics
import time
from typing import Any

from _database import use_database

DATABASE_URL = use_database("BENCH_API_DATABASE_URL", "featureops_bench_api", test_client=True)
os.environ.setdefault("API_RATE_LIMIT_PER_MINUTE", "1000000")  # the benchmark sends thousands a minute
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "30"))
SINGLE = int(os.environ.get("BENCH_SINGLE", "100"))
SIZES = {"bench-10": 10, "bench-1000": 1000}
ENVIRONMENTS = [("development", "Development", False), ("staging", "Staging", False),
                ("production", "Production", True)]
GOAL_MS = 100
NEXT_CURSOR = re.compile(rb'"next_cursor":\s*(null|"([^"]*)")\s*}\s*$')


def _targeting(n: int, environment: str) -> dict[str, Any]:
    on_share = {"development": 100_000, "staging": 50_000, "production": 5_000}[environment]
    split = [{"variation": "on", "weight": on_share}] + (
        [{"variation": "off", "weight": 100_000 - on_share}] if on_share < 100_000 else [])
    return {
        "enabled": True, "assignment_unit": "accountId",
        "targets": [{"variation": "on", "values": [f"acct-{n}-{i}" for i in range(5)]}],
        "rules": [
            {"id": "internal", "description": "Internal users", "clauses": [
                {"op": "in_segment", "values": ["internal_users"]}], "serve": {"variation": "on"}},
            {"id": "beta-eu", "description": "Beta accounts in the EU", "clauses": [
                {"attribute": "plan", "op": "in", "values": ["beta", "enterprise"]},
                {"attribute": "region", "op": "in", "values": ["eu-west", "eu-central"]}],
             "serve": {"variation": "beta"}},
            {"id": "new-app", "description": "New app versions", "clauses": [
                {"attribute": "appVersion", "op": "semver_gte", "values": ["5.2.0"]}],
             "serve": {"split": [{"variation": "on", "weight": 50_000}, {"variation": "beta", "weight": 50_000}]}},
        ],
        "default_serve": {"split": split},
    }


def _check_targeting() -> None:
    from flags.evaluation.targeting_schema import validate_rules, validate_serve, validate_targets

    for environment, _name, _governed in ENVIRONMENTS:
        data = _targeting(0, environment)
        keys = ["off", "on", "beta"]
        problems = (validate_rules(data["rules"], keys) + validate_targets(data["targets"], keys)
                    + validate_serve(data["default_serve"], keys, "default_serve"))
        assert not problems, problems


def build(project_key: str, total: int) -> None:
    """The project, its environments, segment, tags and `total` flags (adds what is missing)."""
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from audit.services import SystemActor
    from flags import services
    from flags.constants import BehaviorSurface, LifecycleStage, Lifetime, Role, ValueType
    from flags.models import Flag, Project, Tag, Targeting, Variation

    actor = SystemActor("bench")
    reader, _ = get_user_model().objects.get_or_create(username="bench-reader")
    project = Project.objects.filter(key=project_key).first()
    if project is None:
        project = services.project_create(key=project_key, name=f"Bench {total}", actor=actor)
        for order, (key, name, governed) in enumerate(ENVIRONMENTS):
            services.environment_create(project=project, key=key, name=name, is_governed=governed,
                                        sort_order=order, actor=actor)
        services.segment_create(project=project, key="internal_users", name="Internal users",
                                included_keys=[f"acct-internal-{i}" for i in range(50)], actor=actor)
        services.membership_grant(project=project, user=reader, role=Role.VIEWER, actor=actor)
    if project.flags.count() >= total:
        return
    _check_targeting()
    environments = list(project.environments.order_by("sort_order"))
    tags = [Tag.objects.get_or_create(project=project, name=f"tag-{i}")[0] for i in range(8)]
    today = timezone.localdate()
    with transaction.atomic():
        flags = Flag.objects.bulk_create([
            Flag(project=project, key=f"flag_{n:04d}", name=f"Flag {n}", value_type=ValueType.STRING,
                 description=f"Benchmark flag {n}: which answer style the assistant uses for segment {n % 17}.",
                 behavior_surface=BehaviorSurface.PROMPT_PROFILE, lifetime=Lifetime.EXPERIMENT,
                 owner_user=reader, owner_team=f"team-{n % 9}", review_date=today + datetime.timedelta(days=n % 60),
                 cleanup_rule="Remove the losing variation after the experiment.", primary_metric="resolution_rate",
                 guardrail_metrics=["latency_p95", "correction_rate"], rollback_action="Serve off.",
                 first_audience="Internal users", stage=LifecycleStage.ACTIVE)
            for n in range(total)])
        variations = Variation.objects.bulk_create([
            Variation(flag=flag, key=key, name=key.title(), value=f"{key}-{flag.key}", risk_rank=rank, sort_order=rank)
            for flag in flags for rank, key in enumerate(["off", "on", "beta"])])
        fallbacks = {v.flag_id: v for v in variations if v.key == "off"}
        for flag in flags:
            flag.fallback_variation = fallbacks[flag.pk]
        Flag.objects.bulk_update(flags, ["fallback_variation"])
        Flag.tags.through.objects.bulk_create([
            Flag.tags.through(flag_id=flag.pk, tag_id=tags[(n + i) % len(tags)].pk)
            for n, flag in enumerate(flags) for i in range(3)])
        Targeting.objects.bulk_create([
            Targeting(flag=flag, environment=environment, **_targeting(n, environment.key))
            for n, flag in enumerate(flags) for environment in environments])


def _client() -> Any:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from flags.services.access_tokens import personal_token_create

    reader = get_user_model().objects.get(username="bench-reader")
    _, raw = personal_token_create(user=reader, name=f"bench {time.time():.0f}", scopes=("read",), actor=reader)
    return Client(headers={"Authorization": f"Bearer {raw}"})


def _get(client: Any, project_key: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/v1/projects/{project_key}/flags", params)
    assert response.status_code == 200, (response.status_code, response.content[:300])
    return json.loads(response.content)


def _timed_page(client: Any, project_key: str, **params: Any) -> tuple[float, bytes]:
    """Server time of one page, and its body. The body is not parsed here: 700 KB of JSON decoded in
    this process (a client's work) would leave garbage for the server's next collection."""
    started = time.perf_counter()
    response = client.get(f"/api/v1/projects/{project_key}/flags", params)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, (response.status_code, response.content[:300])
    return elapsed, response.content


def _next_cursor(body: bytes) -> str | None:
    found = NEXT_CURSOR.search(body)
    assert found, body[-200:]
    return found.group(2).decode() if found.group(2) else None


def _check_pages(client: Any) -> None:
    """Untimed: paging by cursor serves every flag once, each as the flag's own endpoint does."""
    seen: list[str] = []
    cursor = None
    while True:
        page = _get(client, "bench-1000", limit=200, **({"cursor": cursor} if cursor else {}))
        seen += [item["key"] for item in page["items"]]
        for item in page["items"][:3]:
            one = client.get(f"/api/v1/projects/bench-1000/flags/{item['key']}")
            assert json.loads(one.content) == item, item["key"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(seen) and len(set(seen)) == SIZES["bench-1000"], len(seen)


def _queries(client: Any, project_key: str, **params: Any) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        _get(client, project_key, **params)
    return len(captured.captured_queries)


def _p95(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def measure() -> dict[str, Any]:
    from featureops_site.celery import app as celery_app

    celery_app.conf.task_always_eager = True  # the token's last use, once a minute: inline, no broker
    client = _client()
    for _ in range(3):  # warm: imports, the cached loader, connection
        _get(client, "bench-1000", limit=200)

    _check_pages(client)
    # Paging through every flag, as a client syncing the catalog does.
    paging: list[float] = []
    for _ in range(ROUNDS):
        cursor = None
        while True:
            elapsed, body = _timed_page(client, "bench-1000", limit=200, **({"cursor": cursor} if cursor else {}))
            paging.append(elapsed)
            cursor = _next_cursor(body)
            if not cursor:
                break
    first = [_timed_page(client, "bench-1000", limit=200)[0] for _ in range(SINGLE)]
    page_bytes = len(_timed_page(client, "bench-1000", limit=200)[1])

    # Queries: a page of 200 of 1,000 flags (first, middle by cursor, last), the one page of 10
    # flags, and smaller pages of the 1,000.
    cursors = [None]
    while True:
        page = _get(client, "bench-1000", limit=200, **({"cursor": cursors[-1]} if cursors[-1] else {}))
        if not page["next_cursor"]:
            break
        cursors.append(page["next_cursor"])
    queries = {
        "1,000 flags, first page of 200": _queries(client, "bench-1000", limit=200),
        "1,000 flags, middle page of 200": _queries(client, "bench-1000", limit=200, cursor=cursors[2]),
        "1,000 flags, last page of 200": _queries(client, "bench-1000", limit=200, cursor=cursors[-1]),
        "10 flags, one page": _queries(client, "bench-10", limit=200),
        "1,000 flags, page of 50": _queries(client, "bench-1000", limit=50),
        "1,000 flags, page of 10": _queries(client, "bench-1000", limit=10),
    }
    return {
        "paging_p50_ms": round(statistics.median(paging), 1), "paging_p95_ms": round(_p95(paging), 1),
        "paging_requests": len(paging),
        "single_p50_ms": round(statistics.median(first), 1), "single_p95_ms": round(_p95(first), 1),
        "single_requests": len(first), "page_bytes": page_bytes, "queries": queries,
    }


def main() -> None:
    import _setup

    _setup.create_database(DATABASE_URL)
    print(f"machine: {_setup.machine()}; PostgreSQL; database {DATABASE_URL.rsplit('/', 1)[1]}")
    started = time.perf_counter()
    for project_key, total in SIZES.items():
        build(project_key, total)
    print(f"data ready in {time.perf_counter() - started:.1f} s")
    results = measure()
    print(f"paging through 1,000 flags by 200 ({results['paging_requests']} requests): "
          f"p50 {results['paging_p50_ms']} ms, p95 {results['paging_p95_ms']} ms")
    print(f"first page of 200 ({results['single_requests']} requests): p50 {results['single_p50_ms']} ms, "
          f"p95 {results['single_p95_ms']} ms; {results['page_bytes'] / 1024:.0f} KiB")
    for label, count in results["queries"].items():
        print(f"  queries, {label}: {count}")
    worst = max(results["paging_p95_ms"], results["single_p95_ms"])
    print(f"goal: p95 < {GOAL_MS} ms per page of 200 -> {worst} ms ({'met' if worst < GOAL_MS else 'NOT met'})")
    constant = len(set(results["queries"].values())) == 1
    print(f"queries per page: {'constant' if constant else 'NOT constant'} "
          f"({', '.join(str(n) for n in results['queries'].values())})")
    print(json.dumps(results))
    if not constant or worst >= GOAL_MS:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
