"""Engine benchmark: microseconds per evaluation for the seed flags and a heavy flag (50 rules,
3 segments of 10,000 keys, a split), against the LaunchDarkly server SDK evaluating the same
flags from its file data source in the same run. Goal: at least 3x faster than the reference.

    python bench/engine.py
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import _setup  # noqa: F401 - Django settings and sys.path
from _setup import heavy_flag_data, machine, seed_snapshot_data

from flags.evaluation.engine import compile_snapshot, evaluate

LD_OPS = {"equals": "in", "in": "in", "starts_with": "startsWith", "ends_with": "endsWith", "contains": "contains",
          "matches": "matches", "lt": "lessThan", "lte": "lessThanOrEqual", "gt": "greaterThan",
          "gte": "greaterThanOrEqual", "semver_eq": "semVerEqual", "semver_lt": "semVerLessThan",
          "semver_gt": "semVerGreaterThan", "in_segment": "segmentMatch"}

CONTEXTS = [
    {"targetingKey": "agent-1", "accountId": "acct-internal-001", "plan": "pro"},
    {"targetingKey": "agent-2", "accountId": "acct-beta-101", "plan": "beta", "region": "eu"},
    {"targetingKey": "agent-3", "accountId": "acct-77", "plan": "beta", "email": "a@b.example", "riskTier": 3},
    {"targetingKey": "agent-4", "accountId": "acct-2-9999", "plan": "free", "region": "us"},
    {"targetingKey": "agent-5", "accountId": "acct-5123", "plan": "enterprise", "email": "x@tenant48.example"},
]


def to_launchdarkly(data: dict[str, Any]) -> dict[str, Any]:
    """The same flags and segments in LaunchDarkly's data format (context key = accountId)."""

    def clause(c: dict[str, Any]) -> dict[str, Any]:
        return {"attribute": c.get("attribute", "key"), "op": LD_OPS[c["op"]], "values": c["values"],
                "negate": bool(c.get("negate")) != (c["op"] == "not_in"), "contextKind": "user"}

    def serve(s: dict[str, Any], index: dict[str, int]) -> dict[str, Any]:
        if "variation" in s:
            return {"variation": index[s["variation"]]}
        return {"rollout": {"variations": [{"variation": index[b["variation"]], "weight": b["weight"]}
                                           for b in s["split"]], "bucketBy": "key", "contextKind": "user"}}

    flags = {}
    for key, flag in data["flags"].items():
        names = list(flag["variations"])
        index = {name: i for i, name in enumerate(names)}
        t = flag["targeting"]
        flags[key] = {
            "key": key, "version": 1, "on": t["enabled"], "salt": flag["salt"], "trackEvents": False,
            "variations": [flag["variations"][n] for n in names], "offVariation": index[flag["fallback"]],
            "fallthrough": serve(t["default_serve"], index), "prerequisites": [],
            "targets": [{"values": x["values"], "variation": index[x["variation"]]} for x in t.get("targets", [])],
            "rules": [{"id": r["id"], "clauses": [clause(c) for c in r["clauses"]], **serve(r["serve"], index)}
                      for r in t["rules"]],
        }
    segments = {key: {"key": key, "version": 1, "salt": key, "included": s["included_keys"],
                      "excluded": s["excluded_keys"],
                      "rules": [{"clauses": [clause(c) for c in r["clauses"]]} for r in s["rules"]]}
                for key, s in data["segments"].items()}
    return {"flags": flags, "segments": segments}


def per_call_us(function: Callable[[], object], calls: int, repeats: int = 7) -> float:
    """Median over repeats of the mean time per call, in microseconds."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def main() -> None:
    from ldclient import Context, LDClient
    from ldclient.config import Config
    from ldclient.integrations import Files

    data = heavy_flag_data(seed_snapshot_data())
    started = time.perf_counter()
    snapshot = compile_snapshot(data)
    compile_ms = (time.perf_counter() - started) * 1000

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(to_launchdarkly(data), handle)
    client = LDClient(Config(sdk_key="bench", update_processor_class=Files.new_data_source(paths=[handle.name]),
                             send_events=False, diagnostic_opt_out=True))
    ld_contexts = []
    for ctx in CONTEXTS:
        builder = Context.builder(ctx["accountId"])
        for name, value in ctx.items():
            if name not in {"targetingKey", "accountId"}:
                builder.set(name, value)
        ld_contexts.append(builder.build())

    # The two must agree before their speed is worth comparing.
    for flag_key in data["flags"]:
        for ctx, ld_ctx in zip(CONTEXTS, ld_contexts, strict=True):
            ours = evaluate(snapshot, flag_key, ctx).variant
            theirs = client.variation_detail(flag_key, ld_ctx, None).variation_index
            if data["flags"][flag_key]["targeting"]["default_serve"].get("split") is None or ours is None:
                names = list(data["flags"][flag_key]["variations"])
                assert ours is None or names[theirs] == ours, (flag_key, ctx, ours, theirs)

    print(f"machine: {machine()}; snapshot compile (4 flags, 30,000 segment keys): {compile_ms:.1f} ms")
    print(f"{'flag':<32}{'FeatureOps µs':>15}{'LaunchDarkly µs':>17}{'speed-up':>10}")
    ratios = []
    for flag_key in data["flags"]:
        def ours(flag_key: str = flag_key) -> None:
            for ctx in CONTEXTS:
                evaluate(snapshot, flag_key, ctx)

        def theirs(flag_key: str = flag_key) -> None:
            for ld_ctx in ld_contexts:
                client.variation_detail(flag_key, ld_ctx, None)

        ours_us = per_call_us(ours, 400) / len(CONTEXTS)
        theirs_us = per_call_us(theirs, 100) / len(CONTEXTS)
        ratios.append(theirs_us / ours_us)
        print(f"{flag_key:<32}{ours_us:>15.2f}{theirs_us:>17.2f}{theirs_us / ours_us:>9.1f}x")
    print(f"slowest speed-up: {min(ratios):.1f}x (goal: at least 3x)")
    client.close()


if __name__ == "__main__":
    main()
