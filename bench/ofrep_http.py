"""HTTP benchmark: single-flag OFREP requests per second with p50/p99 latency, and bulk
evaluation (every flag of the environment) latency, under gunicorn on PostgreSQL, with load
from wrk in another process on loopback.
Goals: at least 3,000 single-flag requests/s with p99 under 20 ms; bulk of 50 flags p50 under 10 ms.

    apt-get install wrk        # the load generator
    python bench/ofrep_http.py       # DATABASE_URL defaults to postgres://postgres@127.0.0.1:5432/featureops_bench
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from _database import use_database

DATABASE_URL = use_database("BENCH_DATABASE_URL", "featureops_bench")


def prepare_database() -> str:
    """Create the bench database, migrate, load the demo plus 47 extra flags (50 in all), and
    return a production SDK key."""
    import _setup  # noqa: F401 - Django set up on the bench database (DATABASE_URL above)

    _setup.create_database(DATABASE_URL)
    from audit.services import SystemActor
    from flags import services
    from flags.constants import BehaviorSurface, Lifetime, ValueType
    from flags.demo import seed_demo
    from flags.models import Environment, Targeting
    from tests.factories import as_approved

    actor = SystemActor("bench")
    project, _ = seed_demo()
    production = Environment.objects.get(project=project, key="production")
    # A temporary flag needs an owner, a review date and a cleanup rule before it goes on in production.
    contract = {"owner_team": "bench", "review_date": datetime.datetime.now(tz=datetime.UTC).date() + datetime.timedelta(days=90),
                "cleanup_rule": "Benchmark data."}
    for n in range(project.flags.count(), 50):
        services.flag_create(
            project=project, key=f"bench_flag_{n:02d}", name=f"Bench flag {n}", value_type=ValueType.STRING,
            behavior_surface=BehaviorSurface.MODEL_ROUTE, lifetime=Lifetime.EXPERIMENT, fallback_variation_key="baseline",
            variations=[{"key": "baseline", "value": "baseline_route"}, {"key": "candidate", "value": "candidate_route"}],
            actor=actor, **contract,
        )
    for targeting in Targeting.objects.filter(flag__project=project, flag__key__startswith="bench_flag_",
                                              environment=production, enabled=False).select_related("flag"):
        services.flag_update(flag=targeting.flag, actor=actor, **contract)
        # Production is governed: turning a flag on is set up as if an approved change request applied it.
        as_approved(lambda targeting=targeting: services.targeting_update(
            targeting=targeting, actor=actor, enabled=True,
            assignment_unit="accountId",
            rules=[{"id": "internal", "clauses": [{"op": "in_segment", "values": ["internal_users"]}],
                    "serve": {"variation": "candidate"}}],
            default_serve={"split": [{"variation": "baseline", "weight": 90_000},
                                     {"variation": "candidate", "weight": 10_000}]},
        ))
    return services.sdk_key_create(environment=production, name="bench", actor=actor)[1]


def wrk(url: str, key: str, *, connections: int, seconds: int) -> dict[str, float]:
    script = f"""
local n = 0
request = function()
  n = n + 1
  local body = '{{"context":{{"targetingKey":"agent-' .. n .. '","accountId":"acct-' .. (n % 5000) .. '","plan":"beta"}}}}'
  return wrk.format("POST", nil, {{["Authorization"]="Bearer {key}", ["Content-Type"]="application/json"}}, body)
end
"""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", handle.name, url],  # noqa: S603,S607
                         capture_output=True, text=True, check=True).stdout

    def latency_ms(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        value, unit = float(match.group(1)), match.group(2)  # type: ignore[union-attr]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50": latency_ms("50"), "p99": latency_ms("99"), "non_2xx": int(errors.group(1)) if errors else 0}


def main() -> None:
    if not shutil.which("wrk"):
        sys.exit("wrk is needed as the load generator: apt-get install wrk")
    key = prepare_database()
    from tests.servers import gunicorn

    workers = int(os.environ.get("BENCH_WORKERS", "2"))
    single = "/ofrep/v1/evaluate/flags/support_assistant_profile"
    bulk = "/ofrep/v1/evaluate/flags"
    print(f"machine: {os.cpu_count()} cores; gunicorn {workers} sync workers; PostgreSQL; wrk 1 thread on loopback")
    with gunicorn(DATABASE_URL, workers=workers) as base:
        wrk(base + single, key, connections=8, seconds=2)  # warm-up
        one = wrk(base + single, key, connections=16, seconds=10)
        many = wrk(base + bulk, key, connections=4, seconds=10)
    flags_in_bulk = 50
    print(json.dumps({"single": one, "bulk": many}, indent=2))
    print(f"single flag: {one['rps']:.0f} req/s (goal ≥ 3000), p50 {one['p50']:.2f} ms, p99 {one['p99']:.2f} ms "
          f"(goal < 20 ms), non-2xx {one['non_2xx']}")
    print(f"bulk ({flags_in_bulk} flags): p50 {many['p50']:.2f} ms (goal < 10 ms), p99 {many['p99']:.2f} ms, "
          f"{many['rps']:.0f} req/s, non-2xx {many['non_2xx']}")


if __name__ == "__main__":
    main()
