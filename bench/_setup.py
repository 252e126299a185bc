"""Shared set-up for benchmarks: Django settings, and the snapshots they evaluate."""

from __future__ import annotations

import os
import platform
from typing import Any

import _database

_database.django_environment()

import django  # noqa: E402

django.setup()

from django.utils import timezone  # noqa: E402

from flags.demo import SEGMENTS, _flag_specs  # noqa: E402


def create_database(url: str) -> None:
    """Create the PostgreSQL database named in `url` if it is missing, then migrate it."""
    from django.core.management import call_command

    _database.create_database(url)
    call_command("migrate", verbosity=0)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def seed_snapshot_data() -> dict[str, Any]:
    """The demo's production environment as the plain snapshot the builder would write."""
    flags = {}
    for spec in _flag_specs(timezone.localdate()):
        targeting = spec["targeting"]["production"]
        flags[spec["key"]] = {
            "key": spec["key"], "value_type": str(spec["value_type"]), "version": 1, "salt": f"salt-{spec['key']}",
            "fallback": spec["fallback"], "variations": {v["key"]: v["value"] for v in spec["variations"]},
            "targeting": {"targets": [], "version": 1, **targeting},
        }
    segments = {s["key"]: {"included_keys": s["included_keys"], "excluded_keys": s.get("excluded_keys", []),
                           "rules": s["rules"]} for s in SEGMENTS}
    return {"environment": {"id": 1, "key": "production", "version": 1}, "flags": flags, "segments": segments,
            "sdk_keys": {}}


def heavy_flag_data(data: dict[str, Any]) -> dict[str, Any]:
    """Adds `heavy_profile`: 50 rules over attributes and 3 segments of 10,000 keys each, and a
    split default rule (the issue's heavy flag)."""
    for n in range(3):
        data["segments"][f"big_{n}"] = {"included_keys": [f"acct-{n}-{i}" for i in range(10_000)],
                                        "excluded_keys": [], "rules": []}
    rules = []
    for i in range(50):
        if i % 10 == 9:
            clauses = [{"op": "in_segment", "values": [f"big_{(i // 10) % 3}"]}]
        elif i % 3 == 0:
            clauses = [{"attribute": "region", "op": "in", "values": [f"region-{i}", f"zone-{i}"]},
                       {"attribute": "plan", "op": "in", "values": ["enterprise"]}]
        elif i % 3 == 1:
            clauses = [{"attribute": "email", "op": "ends_with", "values": [f"@tenant{i}.example"]}]
        else:
            clauses = [{"attribute": "riskTier", "op": "gte", "values": [100 + i]}]
        rules.append({"id": f"r{i}", "clauses": clauses, "serve": {"variation": "candidate" if i % 2 else "baseline"}})
    data["flags"]["heavy_profile"] = {
        "key": "heavy_profile", "value_type": "json", "version": 1, "salt": "heavy-salt", "fallback": "baseline",
        "variations": {"baseline": {"profile": "baseline"}, "candidate": {"profile": "candidate"},
                       "holdout": {"profile": "holdout"}},
        "targeting": {"enabled": True, "targets": [], "rules": rules, "assignment_unit": "accountId", "version": 1,
                      "default_serve": {"split": [{"variation": "baseline", "weight": 45_000},
                                                  {"variation": "candidate", "weight": 45_000},
                                                  {"variation": "holdout", "weight": 10_000}]}},
    }
    return data
