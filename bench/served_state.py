"""Served-state benchmark: what the served-state guard costs for the heavy flag (50 rules,
3 segments of 10,000 keys, a split; `_setup.heavy_flag_data`) when it is on in a governed
production environment with its rules reaching all three segments.
Goal (the issue's): the served-state hash of the heavy flag stays under 20 ms.

Measures, in one run:
1. the pure part: `build_served_state` + `served_state_hash` from data already loaded;
2. the whole `guard.served_states(...)` call for that flag, its queries included;
3. what one edit costs with the guard's work, against the same edit where there is nothing
   governed to judge: a non-served variation's name (`variation_update`) and a rule's
   description (`targeting_update`), in governed production, in the flag's non-governed
   staging, and on a twin of the flag in a project with no governed environment. The edits
   are interleaved round by round and compared as ratios of medians within the run.

    python bench/served_state.py   # SQLite (a temporary file) unless DATABASE_URL is PostgreSQL
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/featureops python bench/served_state.py

On PostgreSQL it uses a throwaway database next to DATABASE_URL's
(BENCH_SERVED_STATE_DATABASE_URL, default …/featureops_bench_served_state), dropped and
created at the start and dropped at the end. BENCH_RUNS (default 200) sets the samples of
parts 1 and 2; BENCH_EDIT_ROUNDS (default 30) the rounds of part 3.
"""

from __future__ import annotations

import cProfile
import datetime
import io
import json
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_GIVEN = os.environ.get("DATABASE_URL", "")
if _GIVEN.startswith(("postgres://", "postgresql://")):
    VENDOR = "PostgreSQL"
    DATABASE_URL = os.environ.get("BENCH_SERVED_STATE_DATABASE_URL",
                                  _GIVEN.rsplit("/", 1)[0] + "/featureops_bench_served_state")
else:
    VENDOR = "SQLite"
    DATABASE_URL = "sqlite:///" + str(Path(tempfile.mkdtemp(prefix="bench-served-state-")) / "bench.sqlite3")
os.environ["DATABASE_URL"] = DATABASE_URL

RUNS = int(os.environ.get("BENCH_RUNS", "200"))
EDIT_ROUNDS = int(os.environ.get("BENCH_EDIT_ROUNDS", "30"))
GOAL_MS = 20.0

import _database  # noqa: E402
import _setup  # noqa: E402 - Django set up on the database chosen above


def prepare_database() -> None:
    if VENDOR == "PostgreSQL":
        _database.drop_database(DATABASE_URL)
        _setup.create_database(DATABASE_URL)  # creates and migrates
    else:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)


def drop_database() -> None:
    from django.db import connections

    connections.close_all()
    if VENDOR == "PostgreSQL":
        _database.drop_database(DATABASE_URL)
    else:
        path = Path(DATABASE_URL.removeprefix("sqlite:///"))
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink()
        path.parent.rmdir()


def heavy_flag(*, project_key: str, govern: bool) -> dict[str, Any]:
    """A project with production and staging, the heavy flag's three segments and the heavy
    flag itself (plus a variation nothing serves), on in both environments with the heavy
    targeting; production governed when `govern`. Built through the services; production is
    governed last, since turning a flag on there is what governance asks approval for."""
    from audit.services import SystemActor
    from flags import services
    from flags.constants import BehaviorSurface, Lifetime, ValueType
    from flags.models import Targeting

    actor = SystemActor("bench")
    data = _setup.heavy_flag_data(_setup.seed_snapshot_data())
    spec = data["flags"]["heavy_profile"]
    project = services.project_create(key=project_key, name=project_key, actor=actor)
    production = services.environment_create(project=project, key="production", name="Production", sort_order=2,
                                             actor=actor)
    staging = services.environment_create(project=project, key="staging", name="Staging", sort_order=1, actor=actor)
    for key, segment in data["segments"].items():
        if key.startswith("big_"):
            services.segment_create(project=project, key=key, name=key, included_keys=segment["included_keys"],
                                    excluded_keys=segment["excluded_keys"], rules=segment["rules"], actor=actor)
    ranks = {"baseline": 0, "holdout": 0, "candidate": 1}
    variations = [{"key": key, "value": value, "risk_rank": ranks[key]} for key, value in spec["variations"].items()]
    variations.append({"key": "shadow", "value": {"profile": "shadow"}, "risk_rank": 2, "name": "Shadow"})
    flag = services.flag_create(
        project=project, key=spec["key"], name="Heavy profile", value_type=ValueType.JSON,
        behavior_surface=BehaviorSurface.AI_PROFILE, lifetime=Lifetime.EXPERIMENT, variations=variations,
        fallback_variation_key=spec["fallback"],
        json_schema={"type": "object", "properties": {"profile": {"type": "string"}}, "required": ["profile"]},
        owner_team="bench", review_date=datetime.datetime.now(tz=datetime.UTC).date() + datetime.timedelta(days=90),
        cleanup_rule="Benchmark data.", actor=actor,
    )
    targeting = spec["targeting"]
    rules = [{**rule, "description": f"rule {n}"} for n, rule in enumerate(targeting["rules"])]
    for environment in (staging, production):
        services.targeting_update(
            targeting=Targeting.objects.get(flag=flag, environment=environment), actor=actor, enabled=True,
            targets=targeting["targets"], rules=rules, default_serve=targeting["default_serve"],
            assignment_unit=targeting["assignment_unit"],
        )
    if govern:
        services.environment_govern(environment=production, actor=actor, reason="Benchmark.")
    return {"project": project, "flag": flag, "production": production, "staging": staging, "rules": rules}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def sample_ms(function: Callable[[], object], runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> str:
    return f"median {statistics.median(samples):7.2f} ms   p95 {percentile(samples, 0.95):7.2f} ms"


def loaded_inputs(*, project_id: int, flag_id: int, environment_id: int) -> dict[str, Any]:
    """The arguments `served_states` passes to `build_served_state`, read the same way."""
    from flags.models import Flag, Segment, Targeting, Variation

    row = Targeting.objects.values("enabled", "targets", "rules", "default_serve", "assignment_unit").get(
        flag_id=flag_id, environment_id=environment_id)
    flag = Flag.objects.values("json_schema", "fallback_variation__key").get(pk=flag_id)
    segments = {key: {"included_keys": included, "excluded_keys": excluded, "rules": rules}
                for key, included, excluded, rules in Segment.objects.filter(project_id=project_id)
                .values_list("key", "included_keys", "excluded_keys", "rules")}
    variations = {key: (value, rank) for key, value, rank in
                  Variation.objects.filter(flag_id=flag_id).values_list("key", "value", "risk_rank")}
    return {"targeting": row, "fallback": flag["fallback_variation__key"], "variations": variations,
            "segments": segments, "json_schema": flag["json_schema"]}


def profile_top(function: Callable[[], object], runs: int = 20, lines: int = 12) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        function()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def main() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from audit.services import SystemActor
    from flags import services
    from flags.models import Targeting, Variation
    from flags.served_state.guard import served_states
    from flags.served_state.state import build_served_state, served_state_hash

    started = time.perf_counter()
    prepare_database()
    governed = heavy_flag(project_key="bench_governed", govern=True)
    twin = heavy_flag(project_key="bench_ungoverned", govern=False)
    setup_s = time.perf_counter() - started
    version = connection.cursor().connection.info.server_version if VENDOR == "PostgreSQL" else None
    where = f"PostgreSQL {version // 10000}.{version % 10000}" if version else "SQLite"
    print(f"machine: {_setup.machine()}; {where}; database built in {setup_s:.1f} s")

    project_id, flag_id = governed["project"].pk, governed["flag"].pk
    states = served_states(project_id=project_id, flag_ids=[flag_id])
    assert list(states) == [f"{flag_id}:{governed['production'].pk}"], states  # production only: it is governed
    served = next(iter(states.values()))
    assert served.state["enabled"] and sorted(served.state["segments"]) == ["big_0", "big_1", "big_2"]
    assert served_states(project_id=twin["project"].pk, flag_ids=[twin["flag"].pk]) == {}
    inputs = loaded_inputs(project_id=project_id, flag_id=flag_id, environment_id=governed["production"].pk)
    assert served_state_hash(build_served_state(**inputs)) == served.hash
    state_bytes = len(json.dumps(served.state, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())

    # 1. The pure part.
    def pure() -> str:
        return served_state_hash(build_served_state(**inputs))

    pure_ms = sample_ms(pure, RUNS)
    build_ms = sample_ms(lambda: build_served_state(**inputs), RUNS)
    # The generated keys are stored nearly in order, which suits the sort; stored in any order:
    shuffled = {**inputs, "segments": {key: {**segment, "included_keys": random.Random(n).sample(
        segment["included_keys"], len(segment["included_keys"]))} for n, (key, segment) in
        enumerate(inputs["segments"].items())}}
    assert served_state_hash(build_served_state(**shuffled)) == served.hash
    shuffled_ms = sample_ms(lambda: served_state_hash(build_served_state(**shuffled)), RUNS)
    hash_ms = sample_ms(lambda: served_state_hash(served.state), RUNS)

    # 2. The whole call, queries included.
    with CaptureQueriesContext(connection) as queries:
        served_states(project_id=project_id, flag_ids=[flag_id])
    whole_ms = sample_ms(lambda: served_states(project_id=project_id, flag_ids=[flag_id]), RUNS)

    # 3. Edits: interleaved round by round, each its own transaction (the services are atomic).
    actor = SystemActor("bench")

    def variation_edit(case: dict[str, Any]) -> Callable[[int], object]:
        variation = Variation.objects.get(flag=case["flag"], key="shadow")
        return lambda n: services.variation_update(variation=variation, actor=actor, name=f"Shadow {n}")

    def description_edit(case: dict[str, Any], environment_key: str) -> Callable[[int], object]:
        targeting = Targeting.objects.get(flag=case["flag"], environment=case[environment_key])
        rules = case["rules"]

        def edit(n: int) -> object:
            edited = [{**rules[0], "description": f"rule 0, edit {n}"}, *rules[1:]]
            return services.targeting_update(targeting=targeting, actor=actor, rules=edited)
        return edit

    edits = {
        "variation name, governed flag": variation_edit(governed),
        "variation name, ungoverned twin": variation_edit(twin),
        "rule description, governed production": description_edit(governed, "production"),
        "rule description, staging of the governed flag": description_edit(governed, "staging"),
        "rule description, ungoverned twin": description_edit(twin, "production"),
    }
    edit_queries = {}
    for name, edit in edits.items():
        edit(-1)  # warm-up
        with CaptureQueriesContext(connection) as captured:
            edit(-2)
        edit_queries[name] = len(captured)
    edit_ms: dict[str, list[float]] = {name: [] for name in edits}
    for n in range(EDIT_ROUNDS):
        for name, edit in edits.items():
            t0 = time.perf_counter()
            edit(n)
            edit_ms[name].append((time.perf_counter() - t0) * 1000)
    after = served_states(project_id=project_id, flag_ids=[flag_id])[served.key]
    assert after.state["rules"][0]["description"] != "rule 0" and after.hash != served.hash  # the edits landed

    print(f"\nheavy flag: 50 rules, 3 segments x 10,000 keys reached, 4 variations; "
          f"served state {state_bytes / 1024:.0f} KiB of canonical JSON")
    print(f"\n1. pure (build_served_state + served_state_hash), {RUNS} runs")
    print(f"   build + hash    {summary(pure_ms)}")
    print(f"   build only      {summary(build_ms)}")
    print(f"   hash only       {summary(hash_ms)}")
    print(f"   build + hash, segment keys stored in no order  {summary(shuffled_ms)}")
    print(f"\n2. served_states(project_id, flag_ids=[heavy]), {RUNS} runs, {len(queries)} queries")
    print(f"   whole call      {summary(whole_ms)}")
    print(f"\n3. one edit, {EDIT_ROUNDS} interleaved rounds (median, p95, queries)")
    width = max(map(len, edits))
    for name, samples in edit_ms.items():
        print(f"   {name:<{width}}  {summary(samples)}   {edit_queries[name]:>3} queries")
    median = {name: statistics.median(samples) for name, samples in edit_ms.items()}
    variation_ratio = median["variation name, governed flag"] / median["variation name, ungoverned twin"]
    production_ratio = (median["rule description, governed production"]
                        / median["rule description, ungoverned twin"])
    staging_ratio = (median["rule description, staging of the governed flag"]
                     / median["rule description, ungoverned twin"])
    print(f"   ratios to the ungoverned twin: variation name {variation_ratio:.1f}x; rule description in governed "
          f"production {production_ratio:.1f}x, in staging of the governed flag {staging_ratio:.1f}x")
    print(f"   guard's added time (median difference): variation name "
          f"{median['variation name, governed flag'] - median['variation name, ungoverned twin']:.1f} ms; "
          f"rule description {median['rule description, governed production'] - median['rule description, ungoverned twin']:.1f} ms")

    pure_median, pure_p95 = statistics.median(pure_ms), percentile(pure_ms, 0.95)
    worst_median, worst_p95 = statistics.median(shuffled_ms), percentile(shuffled_ms, 0.95)
    whole_median, whole_p95 = statistics.median(whole_ms), percentile(whole_ms, 0.95)
    print(f"\ngoal: served-state hash of the heavy flag under {GOAL_MS:.0f} ms")
    print(f"   pure part:  median {pure_median:.2f} ms, p95 {pure_p95:.2f} ms -> "
          f"{'MET' if pure_p95 < GOAL_MS else 'met at the median only' if pure_median < GOAL_MS else 'NOT MET'} "
          f"({GOAL_MS / pure_median:.1f}x headroom at the median); keys shuffled: median {worst_median:.2f} ms, "
          f"p95 {worst_p95:.2f} ms -> {'MET' if worst_p95 < GOAL_MS else 'NOT MET'}")
    print(f"   with loading ({where}): median {whole_median:.2f} ms, p95 {whole_p95:.2f} ms -> "
          f"{'MET' if whole_p95 < GOAL_MS else 'met at the median only' if whole_median < GOAL_MS else 'NOT MET'}")
    if pure_median >= GOAL_MS or os.environ.get("BENCH_PROFILE"):
        print("\nprofile of the pure part (20 runs, by own time):")
        print(profile_top(pure))


if __name__ == "__main__":
    try:
        main()
    finally:
        drop_database()
