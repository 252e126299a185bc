"""The pure targeting-shape validation (no Django) and the semantic-version parser."""

from __future__ import annotations

import pytest

from flags.evaluation.semver import parse_semver
from flags.evaluation.targeting_schema import (
    OPERATORS,
    SPLIT_TOTAL,
    referenced_segments,
    validate_clause,
    validate_rules,
    validate_segment_rules,
    validate_serve,
)

VARIATIONS = {"baseline", "candidate"}


@pytest.mark.parametrize("op,values", [
    ("equals", ["pro"]), ("in", ["pro", "team"]), ("not_in", ["free"]), ("starts_with", ["acct-"]),
    ("ends_with", ["@example.com"]), ("contains", ["support"]), ("matches", [r"^acct-\d+$"]),
    ("lt", [10]), ("lte", [10.5]), ("gt", [0]), ("gte", [1]), ("semver_eq", ["1.2.3"]),
    ("semver_lt", ["2.0.0"]), ("semver_lte", ["2.0"]), ("semver_gt", ["1.0.0-rc.1"]), ("semver_gte", ["v1"]),
])
def test_validate_clause__every_operator_with_good_values__accepted(op: str, values: list) -> None:
    assert validate_clause({"attribute": "plan", "op": op, "values": values, "negate": True}) == []


def test_operators__cover_the_required_set() -> None:
    required = {"equals", "in", "not_in", "starts_with", "ends_with", "contains", "matches", "lt", "lte", "gt",
                "gte", "semver_eq", "semver_lt", "semver_gt", "in_segment"}
    assert required <= set(OPERATORS)


@pytest.mark.parametrize("clause,fragment", [
    ({"attribute": "plan", "op": "like", "values": ["x"]}, "unknown operator"),
    ({"attribute": "email", "op": "matches", "values": ["(oops"]}, "does not compile"),
    ({"attribute": "n", "op": "lt", "values": ["ten"]}, "is not a number"),
    ({"attribute": "n", "op": "gt", "values": [True]}, "is not a number"),
    ({"attribute": "v", "op": "semver_gt", "values": ["one.two"]}, "not a semantic version"),
    ({"attribute": "plan", "op": "in", "values": []}, "non-empty list"),
    ({"attribute": "plan", "op": "equals", "values": ["a", "b"]}, "exactly one value"),
    ({"attribute": "bad attribute", "op": "in", "values": ["a"]}, "context attribute"),
    ({"attribute": "plan", "op": "in", "values": ["a"], "negate": "yes"}, "true or false"),
    ({"attribute": "plan", "op": "in", "values": ["a"], "extra": 1}, "unknown field"),
    ("plan == pro", "must be an object"),
])
def test_validate_clause__bad_input__named_problem(clause: object, fragment: str) -> None:
    problems = validate_clause(clause)
    assert problems and any(fragment in str(p) for p in problems)


@pytest.mark.parametrize("clause", [
    {"attribute": "v", "op": "matches", "values": ["a{4294967296}"]},
    {"attribute": "v", "op": "semver_gt", "values": ["1" * 5000]},
    {"attribute": "v", "op": "matches", "values": ["(" * 5000 + ")" * 5000]},
])
def test_clause__pathological_values__refused_not_raised(clause: dict) -> None:
    assert validate_clause(clause)


def test_validate_serve__split_weights__must_sum_to_total() -> None:
    good = {"split": [{"variation": "baseline", "weight": 95_000}, {"variation": "candidate", "weight": 5_000}]}
    assert validate_serve(good, VARIATIONS) == []
    short = {"split": [{"variation": "baseline", "weight": 60_000}, {"variation": "candidate", "weight": 30_000}]}
    assert any("90 %" in str(p) for p in validate_serve(short, VARIATIONS))
    repeated = {"split": [{"variation": "baseline", "weight": 50_000}, {"variation": "baseline", "weight": 50_000}]}
    assert any("twice" in str(p) for p in validate_serve(repeated, VARIATIONS))
    negative = {"split": [{"variation": "baseline", "weight": -1}, {"variation": "candidate", "weight": SPLIT_TOTAL + 1}]}
    assert len(validate_serve(negative, VARIATIONS)) == 2
    assert validate_serve({"variation": "baseline", "split": []}, VARIATIONS)
    assert validate_serve({}, VARIATIONS)


def test_validate_rules__problems_carry_paths() -> None:
    rules = [
        {"id": "a", "clauses": [{"attribute": "plan", "op": "in", "values": ["pro"]}], "serve": {"variation": "candidate"}},
        {"id": "a", "clauses": [], "serve": {"variation": "nope"}},
    ]
    messages = [str(p) for p in validate_rules(rules, VARIATIONS)]
    assert "rules[1].id: duplicate rule id 'a'" in messages
    assert "rules[1].clauses: a rule needs at least one clause" in messages
    assert "rules[1].serve.variation: unknown variation 'nope'" in messages


def test_validate_segment_rules_and_references() -> None:
    rules = [{"clauses": [{"op": "in_segment", "values": ["beta"]}, {"attribute": "plan", "op": "in", "values": ["x"]}]}]
    assert validate_segment_rules(rules) == []
    assert referenced_segments(rules) == {"beta"}
    assert validate_segment_rules({"clauses": []})


@pytest.mark.parametrize("lower,higher", [
    ("1.2.3", "1.2.4"), ("1.2.3", "1.10.0"), ("1.0.0-alpha", "1.0.0"), ("1.0.0-alpha", "1.0.0-alpha.1"),
    ("1.0.0-alpha.1", "1.0.0-beta"), ("1.0.0-rc.1", "1.0.0-rc.11"), ("2", "2.0.1"), ("v1.9.9", "2.0.0"),
])
def test_parse_semver__ordering_follows_semver_rules(lower: str, higher: str) -> None:
    assert parse_semver(lower) < parse_semver(higher)
    assert parse_semver(higher) > parse_semver(lower)


def test_parse_semver__build_metadata_ignored_and_garbage_rejected() -> None:
    assert not parse_semver("1.0.0+build.5") < parse_semver("1.0.0")
    assert parse_semver("1.0.0+build.5") <= parse_semver("1.0.0")
    for garbage in ("", "1..2", "01.2.3", "latest", None, 3):
        assert parse_semver(garbage) is None
