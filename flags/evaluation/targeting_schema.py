"""The stored shape of targeting: clauses, rules, serves (a variation or a weighted split),
individual targets and segment rules, with validation that reports every problem by path.

Stored shapes (JSON):
    clause  {"attribute": "plan", "op": "in", "values": ["pro"], "negate": false}
            op "in_segment" takes segment keys as values and no attribute.
    serve   {"variation": "citation_first_v4"}
         or {"split": [{"variation": "baseline_v3", "weight": 95000},
                       {"variation": "citation_first_v4", "weight": 5000}]}
            weights are thousandths of a percent and sum to SPLIT_TOTAL (100 %).
    rule    {"id": "r1", "description": "...", "clauses": [clause, ...], "serve": serve}
            clauses are ANDed; rules are tried in order.
    target  {"variation": "write", "values": ["acct-1", "acct-2"]}
    segment rule {"clauses": [clause, ...]}  (a segment matches when any of its rules does)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from flags.evaluation.semver import parse_semver

SPLIT_TOTAL = 100_000  # 100 % in thousandths of a percent

SEGMENT_OPERATOR = "in_segment"
STRING_OPERATORS = frozenset({"starts_with", "ends_with", "contains"})
NUMERIC_OPERATORS = frozenset({"lt", "lte", "gt", "gte"})
SEMVER_OPERATORS = frozenset({"semver_eq", "semver_lt", "semver_lte", "semver_gt", "semver_gte"})
OPERATORS: dict[str, str] = {
    "equals": "equals",
    "in": "is one of",
    "not_in": "is not one of",
    "starts_with": "starts with",
    "ends_with": "ends with",
    "contains": "contains",
    "matches": "matches regex",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
    "semver_eq": "version =",
    "semver_lt": "version <",
    "semver_lte": "version <=",
    "semver_gt": "version >",
    "semver_gte": "version >=",
    SEGMENT_OPERATOR: "is in segment",
}
MAX_VALUES_PER_CLAUSE = 10_000
MAX_RULES = 200
MAX_PATTERN_LENGTH = 1_000
_ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,99}$")


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def _unknown_fields(data: dict, allowed: set[str], path: str) -> list[Problem]:
    return [
        Problem(f"{path}.{name}" if path else str(name), "unknown field")
        for name in sorted(set(data) - allowed, key=str)
    ]


def _objects(items: list, path: str, shape: str, allowed: set[str], problems: list[Problem]
             ) -> Iterator[tuple[str, dict]]:
    """Each object in `items` with its path, once its unknown fields are reported in `problems`;
    any other item is reported there as not `shape`, and skipped."""
    for index, item in enumerate(items):
        item_path = f"{path}[{index}]"
        if not isinstance(item, dict):
            problems.append(Problem(item_path, f"must be {shape}"))
            continue
        problems.extend(_unknown_fields(item, allowed, item_path))
        yield item_path, item


def _validate_rule_clauses(rule: dict, path: str) -> list[Problem]:
    clauses = rule.get("clauses")
    if not isinstance(clauses, list) or not clauses:
        return [Problem(f"{path}.clauses", "a rule needs at least one clause")]
    return [problem for index, clause in enumerate(clauses)
            for problem in validate_clause(clause, f"{path}.clauses[{index}]")]


def validate_clause(clause: object, path: str = "clause") -> list[Problem]:
    if not isinstance(clause, dict):
        return [Problem(path, "must be an object with attribute, op and values")]
    problems = _unknown_fields(clause, {"attribute", "op", "values", "negate"}, path)
    op = clause.get("op")
    if op not in OPERATORS:
        problems.append(Problem(f"{path}.op", f"unknown operator {op!r}"))
        return problems
    negate = clause.get("negate", False)
    if not isinstance(negate, bool):
        problems.append(Problem(f"{path}.negate", "must be true or false"))
    attribute = clause.get("attribute")
    if op != SEGMENT_OPERATOR and (not isinstance(attribute, str) or not _ATTRIBUTE.match(attribute)):
        problems.append(
            Problem(f"{path}.attribute", "must name a context attribute (letters, digits, _ . -)")
        )
    values = clause.get("values")
    if not isinstance(values, list) or not values:
        problems.append(Problem(f"{path}.values", "must be a non-empty list"))
        return problems
    if len(values) > MAX_VALUES_PER_CLAUSE:
        problems.append(Problem(f"{path}.values", f"at most {MAX_VALUES_PER_CLAUSE} values"))
    if op == "equals" and len(values) != 1:
        problems.append(Problem(f"{path}.values", "equals takes exactly one value; use 'in'"))
    for index, value in enumerate(values):
        vpath = f"{path}.values[{index}]"
        if op in NUMERIC_OPERATORS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(Problem(vpath, f"{value!r} is not a number"))
        elif op in SEMVER_OPERATORS:
            if parse_semver(value) is None:
                problems.append(Problem(vpath, f"{value!r} is not a semantic version"))
        elif op == "matches":
            if not isinstance(value, str):
                problems.append(Problem(vpath, "a regular expression must be a string"))
                continue
            if len(value) > MAX_PATTERN_LENGTH:
                problems.append(Problem(vpath, f"regular expression is longer than {MAX_PATTERN_LENGTH} characters"))
                continue
            try:
                re.compile(value)
            except (re.error, OverflowError, RecursionError) as exc:
                problems.append(Problem(vpath, f"regular expression does not compile: {exc}"))
        elif op in STRING_OPERATORS or op == SEGMENT_OPERATOR:
            if not isinstance(value, str) or not value:
                problems.append(Problem(vpath, "must be a non-empty string"))
        elif not isinstance(value, str | int | float | bool):
            problems.append(Problem(vpath, "must be a string, number or boolean"))
    return problems


def validate_serve(serve: object, variation_keys: Iterable[str], path: str = "serve") -> list[Problem]:
    keys = set(variation_keys)
    if not isinstance(serve, dict):
        return [Problem(path, "must serve a variation or a split")]
    problems = _unknown_fields(serve, {"variation", "split"}, path)
    if ("variation" in serve) == ("split" in serve):
        problems.append(Problem(path, "serve exactly one of: a variation, a split"))
        return problems
    if "variation" in serve:
        if serve["variation"] not in keys:
            problems.append(Problem(f"{path}.variation", f"unknown variation {serve['variation']!r}"))
        return problems
    split = serve["split"]
    if not isinstance(split, list) or not split:
        problems.append(Problem(f"{path}.split", "must list at least one weighted variation"))
        return problems
    total = 0
    seen: set[str] = set()
    for bpath, bucket in _objects(split, f"{path}.split", "{variation, weight}", {"variation", "weight"}, problems):
        variation = bucket.get("variation")
        if variation not in keys:
            problems.append(Problem(f"{bpath}.variation", f"unknown variation {variation!r}"))
        elif variation in seen:
            problems.append(Problem(f"{bpath}.variation", f"{variation!r} appears twice"))
        else:
            seen.add(variation)
        weight = bucket.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= SPLIT_TOTAL:
            problems.append(Problem(f"{bpath}.weight", f"must be a whole number from 0 to {SPLIT_TOTAL}"))
        else:
            total += weight
    if not problems and total != SPLIT_TOTAL:
        problems.append(
            Problem(f"{path}.split", f"weights add up to {total / 1000:g} %, not 100 %")
        )
    return problems


def validate_rules(rules: object, variation_keys: Iterable[str], path: str = "rules") -> list[Problem]:
    keys = set(variation_keys)
    if not isinstance(rules, list):
        return [Problem(path, "must be a list of rules")]
    if len(rules) > MAX_RULES:
        return [Problem(path, f"at most {MAX_RULES} rules")]
    problems: list[Problem] = []
    ids: set[str] = set()
    for rpath, rule in _objects(rules, path, "an object with clauses and serve",
                                {"id", "description", "clauses", "serve"}, problems):
        rule_id = rule.get("id")
        if rule_id is not None:
            if not isinstance(rule_id, str) or not rule_id:
                problems.append(Problem(f"{rpath}.id", "must be a non-empty string"))
            elif rule_id in ids:
                problems.append(Problem(f"{rpath}.id", f"duplicate rule id {rule_id!r}"))
            else:
                ids.add(rule_id)
        if not isinstance(rule.get("description", ""), str):
            problems.append(Problem(f"{rpath}.description", "must be text"))
        problems += _validate_rule_clauses(rule, rpath)
        problems += validate_serve(rule.get("serve"), keys, f"{rpath}.serve")
    return problems


def validate_targets(targets: object, variation_keys: Iterable[str], path: str = "targets") -> list[Problem]:
    keys = set(variation_keys)
    if not isinstance(targets, list):
        return [Problem(path, "must be a list of {variation, values}")]
    problems: list[Problem] = []
    placed: dict[str, str] = {}
    for tpath, target in _objects(targets, path, "{variation, values}", {"variation", "values"}, problems):
        variation = target.get("variation")
        if variation not in keys:
            problems.append(Problem(f"{tpath}.variation", f"unknown variation {variation!r}"))
        values = target.get("values")
        if not isinstance(values, list):
            problems.append(Problem(f"{tpath}.values", "must be a list of keys"))
            continue
        for value in values:
            if not isinstance(value, str) or not value.strip():
                problems.append(Problem(f"{tpath}.values", f"{value!r} is not a key"))
            elif value in placed and placed[value] != variation:
                problems.append(
                    Problem(f"{tpath}.values", f"{value!r} is already targeted to {placed[value]!r}")
                )
            else:
                placed[value] = str(variation)
    return problems


def validate_segment_rules(rules: object, path: str = "rules") -> list[Problem]:
    if not isinstance(rules, list):
        return [Problem(path, "must be a list of rules")]
    problems: list[Problem] = []
    for rpath, rule in _objects(rules, path, "an object with clauses", {"clauses", "description"}, problems):
        problems += _validate_rule_clauses(rule, rpath)
    return problems


def referenced_segments(rules: object) -> set[str]:
    """Segment keys named by in_segment clauses anywhere in a list of rules."""
    found: set[str] = set()
    if not isinstance(rules, list):
        return found
    for rule in rules:
        if not isinstance(rule, dict) or not isinstance(rule.get("clauses"), list):
            continue
        for clause in rule["clauses"]:
            if isinstance(clause, dict) and clause.get("op") == SEGMENT_OPERATOR:
                found.update(v for v in clause.get("values") or [] if isinstance(v, str))
    return found


def served_variations(serve: object) -> set[str]:
    if not isinstance(serve, dict):
        return set()
    if "variation" in serve:
        return {serve["variation"]}
    return {b.get("variation") for b in serve.get("split") or [] if isinstance(b, dict)}
