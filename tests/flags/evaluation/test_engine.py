"""The pure evaluation engine: order, reasons, errors, bucketing, compiled rules, and
property tests (determinism, monotonic expansion, split proportions, never raising)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flags.evaluation.engine import (
    BUCKETS,
    ErrorCode,
    Reason,
    bucket_of,
    compile_snapshot,
    evaluate,
    evaluate_all,
)
from tests.servers import ROOT

TOOL_VARIATIONS = {"none": "none", "read_only": "read_only", "approval_required": "approval_required", "write": "write"}


def snapshot_data(**targeting: Any) -> dict[str, Any]:
    base_targeting = {"enabled": True, "targets": [], "rules": [], "default_serve": {"variation": "read_only"},
                      "assignment_unit": "accountId", "version": 3}
    base_targeting.update(targeting)
    return {
        "environment": {"id": 7, "key": "production", "version": 42},
        "flags": {
            "tool_mode": {"key": "tool_mode", "value_type": "string", "version": 2, "salt": "s4lt",
                          "fallback": "none", "variations": dict(TOOL_VARIATIONS), "targeting": base_targeting},
        },
        "segments": {
            "internal_users": {"included_keys": ["acct-internal"], "excluded_keys": ["acct-contractor"],
                               "rules": [{"clauses": [{"attribute": "email", "op": "ends_with",
                                                       "values": ["@support.example.com"]}]}]},
            "beta_accounts": {"included_keys": ["acct-beta"], "excluded_keys": [],
                              "rules": [{"clauses": [{"op": "in_segment", "values": ["internal_users"]}]}]},
        },
        "sdk_keys": {},
    }


def run(context: dict[str, Any], **targeting: Any):
    return evaluate(compile_snapshot(snapshot_data(**targeting)), "tool_mode", context)


def split(*weights: tuple[str, int]) -> dict[str, Any]:
    return {"split": [{"variation": v, "weight": w} for v, w in weights]}


# --- order and reasons ---------------------------------------------------------------------


def test_evaluate__flag_off__serves_fallback_disabled() -> None:
    result = run({"accountId": "a"}, enabled=False, targets=[{"variation": "write", "values": ["a"]}])
    assert (result.variant, result.value, result.reason, result.error_code) == ("none", "none", "DISABLED", None)


def test_evaluate__no_targets_or_rules__static_with_versions_in_metadata() -> None:
    result = run({})
    assert (result.variant, result.reason) == ("read_only", Reason.STATIC)
    assert result.metadata == {"flagVersion": 2, "targetingVersion": 3, "environmentVersion": 42}


def test_evaluate__individual_target__wins_over_rules() -> None:
    rules = [{"id": "all", "clauses": [{"attribute": "plan", "op": "in", "values": ["pro"]}],
              "serve": {"variation": "approval_required"}}]
    result = run({"accountId": "acct-9", "plan": "pro"}, targets=[{"variation": "write", "values": ["acct-9"]}],
                 rules=rules)
    assert (result.variant, result.reason) == ("write", Reason.TARGETING_MATCH)


def test_evaluate__rules__first_match_in_order_with_rule_metadata() -> None:
    rules = [
        {"id": "pro", "clauses": [{"attribute": "plan", "op": "in", "values": ["pro"]}], "serve": {"variation": "write"}},
        {"id": "eu", "clauses": [{"attribute": "region", "op": "equals", "values": ["eu"]}],
         "serve": {"variation": "approval_required"}},
    ]
    both = run({"accountId": "a", "plan": "pro", "region": "eu"}, rules=rules)
    assert (both.variant, both.metadata["ruleId"], both.metadata["ruleIndex"]) == ("write", "pro", 0)
    second = run({"accountId": "a", "plan": "free", "region": "eu"}, rules=rules)
    assert (second.variant, second.reason, second.metadata["ruleId"]) == ("approval_required", "TARGETING_MATCH", "eu")
    neither = run({"accountId": "a", "plan": "free"}, rules=rules)
    assert (neither.variant, neither.reason) == ("read_only", Reason.DEFAULT)


def test_evaluate__default_split__reason_split() -> None:
    result = run({"accountId": "acct-1"}, default_serve=split(("read_only", 50_000), ("write", 50_000)))
    assert result.reason == Reason.SPLIT and result.variant in {"read_only", "write"}


def test_evaluate__split_without_assignment_unit__targeting_key_missing() -> None:
    result = run({"targetingKey": "user-1"}, default_serve=split(("read_only", 50_000), ("write", 50_000)))
    assert (result.reason, result.error_code, result.value) == (Reason.ERROR, ErrorCode.TARGETING_KEY_MISSING, None)


def test_evaluate__unknown_flag__flag_not_found() -> None:
    result = evaluate(compile_snapshot(snapshot_data()), "nope", {})
    assert result.error_code == ErrorCode.FLAG_NOT_FOUND


@pytest.mark.parametrize("context", [[], "user-1", {"targetingKey": 5}, None])
def test_evaluate__context_not_an_object_or_bad_targeting_key__invalid_context(context: Any) -> None:
    assert run(context).error_code == ErrorCode.INVALID_CONTEXT


def test_evaluate__broken_configuration__parse_error_but_off_still_serves_fallback() -> None:
    broken = {"rules": [{"clauses": [{"attribute": "a", "op": "resembles", "values": ["x"]}],
                         "serve": {"variation": "write"}}]}
    assert run({"accountId": "a"}, **broken).error_code == ErrorCode.PARSE_ERROR
    assert run({"accountId": "a"}, enabled=False, **broken).reason == Reason.DISABLED


def test_evaluate__segment_included_excluded_rules_and_nesting() -> None:
    rules = [{"id": "internal", "clauses": [{"op": "in_segment", "values": ["internal_users"]}],
              "serve": {"variation": "write"}},
             {"id": "beta", "clauses": [{"op": "in_segment", "values": ["beta_accounts"]}],
              "serve": {"variation": "approval_required"}}]
    assert run({"accountId": "acct-internal"}, rules=rules).variant == "write"  # included key
    assert run({"accountId": "x", "email": "ann@support.example.com"}, rules=rules).variant == "write"  # rule
    assert run({"accountId": "acct-contractor", "email": "c@support.example.com"}, rules=rules).variant == "read_only"
    assert run({"accountId": "acct-beta"}, rules=rules).variant == "approval_required"  # included in beta
    assert run({"accountId": "acct-other"}, rules=rules).variant == "read_only"


@pytest.mark.parametrize("clause,context,expected", [
    ({"attribute": "plan", "op": "equals", "values": ["pro"]}, {"plan": "pro"}, True),
    ({"attribute": "plan", "op": "in", "values": ["pro", "team"]}, {"plan": "team"}, True),
    ({"attribute": "plan", "op": "not_in", "values": ["free"]}, {"plan": "pro"}, True),
    ({"attribute": "plan", "op": "not_in", "values": ["free"]}, {"plan": "free"}, False),
    ({"attribute": "groups", "op": "in", "values": ["beta"]}, {"groups": ["alpha", "beta"]}, True),
    ({"attribute": "email", "op": "starts_with", "values": ["ops-"]}, {"email": "ops-1@x.io"}, True),
    ({"attribute": "email", "op": "ends_with", "values": ["@x.io"]}, {"email": "a@x.io"}, True),
    ({"attribute": "workflow", "op": "contains", "values": ["support"]}, {"workflow": "support_answer"}, True),
    ({"attribute": "account", "op": "matches", "values": [r"^acct-\d{3}$"]}, {"account": "acct-123"}, True),
    ({"attribute": "account", "op": "matches", "values": [r"^acct-\d{3}$"]}, {"account": "acct-1234"}, False),
    ({"attribute": "risk", "op": "lt", "values": [3]}, {"risk": 2}, True),
    ({"attribute": "risk", "op": "lte", "values": [3]}, {"risk": 3}, True),
    ({"attribute": "risk", "op": "gt", "values": [3]}, {"risk": 3.5}, True),
    ({"attribute": "risk", "op": "gte", "values": [3]}, {"risk": 2}, False),
    ({"attribute": "risk", "op": "gt", "values": [1]}, {"risk": "5"}, False),
    ({"attribute": "risk", "op": "gt", "values": [0]}, {"risk": True}, False),
    ({"attribute": "app", "op": "semver_gte", "values": ["2.1.0"]}, {"app": "2.10.0"}, True),
    ({"attribute": "app", "op": "semver_lt", "values": ["2.0.0"]}, {"app": "2.0.0-rc.1"}, True),
    ({"attribute": "app", "op": "semver_eq", "values": ["2.0.0"]}, {"app": "2.0"}, True),
    ({"attribute": "app", "op": "semver_gt", "values": ["1.0.0"]}, {"app": "not-a-version"}, False),
    ({"attribute": "plan", "op": "in", "values": ["pro"], "negate": True}, {"plan": "free"}, True),
    ({"attribute": "plan", "op": "in", "values": ["pro"], "negate": True}, {}, False),
    ({"attribute": "flag", "op": "in", "values": [1]}, {"flag": True}, False),
])
def test_clause__operator_semantics(clause: dict[str, Any], context: dict[str, Any], expected: bool) -> None:
    rules = [{"id": "r", "clauses": [clause], "serve": {"variation": "write"}}]
    result = run({"accountId": "a", **context}, rules=rules)
    assert (result.variant == "write") is expected


def test_compile__rules_compiled_once__snapshot_is_immutable() -> None:
    data = snapshot_data(rules=[{"id": "r", "clauses": [{"attribute": "e", "op": "matches", "values": ["^a"]}],
                                 "serve": {"variation": "write"}}])
    snapshot = compile_snapshot(copy.deepcopy(data))
    # Changing the source afterwards changes nothing: the compiled form holds its own data.
    data["flags"]["tool_mode"]["targeting"]["rules"][0]["clauses"][0]["values"] = ["^z"]
    assert evaluate(snapshot, "tool_mode", {"e": "abc", "accountId": "a"}).variant == "write"
    with pytest.raises(TypeError):
        snapshot.flags["x"] = None  # type: ignore[index]


def test_evaluate_all__every_flag_once() -> None:
    results = evaluate_all(compile_snapshot(snapshot_data()), {"accountId": "a"})
    assert [r.flag_key for r in results] == ["tool_mode"]


# --- bucketing -----------------------------------------------------------------------------


def test_bucket_of__follows_the_documented_formula() -> None:
    # The documented, release-stable formula, computed here independently of the engine.
    digest = hashlib.blake2b(b"support_assistant_profile.0011223344556677.acct-42", digest_size=8).digest()
    assert bucket_of("support_assistant_profile", "0011223344556677", "acct-42") == int.from_bytes(digest, "big") % 100_000
    assert BUCKETS >= 10_000


def test_bucket_of__other_process_with_other_hash_seed__same_buckets() -> None:
    units = [f"acct-{i}" for i in range(50)]
    here = [bucket_of("flag", "salt", unit) for unit in units]
    code = ("import json; from flags.evaluation.engine import bucket_of; "
            f"print(json.dumps([bucket_of('flag', 'salt', u) for u in {units!r}]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=ROOT, timeout=60)
    assert json.loads(out.stdout) == here


def test_split__100k_units__observed_within_one_point_of_weights() -> None:
    serve = split(("none", 20_000), ("read_only", 50_000), ("write", 30_000))
    snapshot = compile_snapshot(snapshot_data(default_serve=serve))
    counts = {"none": 0, "read_only": 0, "write": 0}
    for unit in range(100_000):
        counts[evaluate(snapshot, "tool_mode", {"accountId": f"acct-{unit}"}).variant] += 1
    for variation, weight in (("none", 20), ("read_only", 50), ("write", 30)):
        assert abs(counts[variation] / 1000 - weight) < 1.0, counts


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit=st.text(min_size=1, max_size=40), salt=st.text(max_size=16))
def test_property__bucketing_is_deterministic(unit: str, salt: str) -> None:
    assert bucket_of("flag", salt, unit) == bucket_of("flag", salt, unit)


@settings(max_examples=200, deadline=None)
@given(units=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=50, unique=True),
       small=st.integers(min_value=0, max_value=100_000), extra=st.integers(min_value=0, max_value=100_000))
def test_property__candidate_expansion_is_monotonic(units: list[str], small: int, extra: int) -> None:
    large = min(100_000, small + extra)
    before = compile_snapshot(snapshot_data(default_serve=split(("read_only", 100_000 - small), ("write", small))))
    after = compile_snapshot(snapshot_data(default_serve=split(("read_only", 100_000 - large), ("write", large))))
    for unit in units:
        if evaluate(before, "tool_mode", {"accountId": unit}).variant == "write":
            assert evaluate(after, "tool_mode", {"accountId": unit}).variant == "write"


@settings(max_examples=20, deadline=None)
@given(candidate=st.integers(min_value=1_000, max_value=99_000))
def test_property__split_proportions_track_weights(candidate: int) -> None:
    snapshot = compile_snapshot(snapshot_data(default_serve=split(("read_only", 100_000 - candidate),
                                                                  ("write", candidate))))
    served = sum(evaluate(snapshot, "tool_mode", {"accountId": f"u{i}"}).variant == "write" for i in range(20_000))
    assert abs(served / 20_000 - candidate / 100_000) < 0.02


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(context=st.one_of(json_values, st.dictionaries(
    st.sampled_from(["targetingKey", "accountId", "plan", "email", "risk", "app", "groups", "region"]) | st.text(max_size=6),
    json_values, max_size=8)))
def test_property__no_context_makes_evaluation_raise(context: Any) -> None:
    rules = [
        {"id": "a", "clauses": [{"attribute": "email", "op": "matches", "values": ["@x"]},
                                {"attribute": "risk", "op": "gte", "values": [2]}], "serve": {"variation": "write"}},
        {"id": "b", "clauses": [{"attribute": "app", "op": "semver_gt", "values": ["1.0.0"]}],
         "serve": split(("none", 50_000), ("write", 50_000))},
        {"id": "c", "clauses": [{"op": "in_segment", "values": ["beta_accounts"], "negate": True}],
         "serve": {"variation": "approval_required"}},
        {"id": "d", "clauses": [{"attribute": "groups", "op": "not_in", "values": ["x", 1, True]}],
         "serve": {"variation": "none"}},
    ]
    snapshot = compile_snapshot(snapshot_data(rules=rules, targets=[{"variation": "write", "values": ["vip"]}],
                                              default_serve=split(("read_only", 70_000), ("write", 30_000))))
    result = evaluate(snapshot, "tool_mode", context)
    assert result.reason in {"TARGETING_MATCH", "SPLIT", "DEFAULT", "ERROR"}
    assert (result.error_code is None) == (result.variant is not None)


def test_engine_package__imports_no_django() -> None:
    code = ("import sys, flags.evaluation.engine, flags.evaluation.targeting_schema; "
            "print(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "[]"
