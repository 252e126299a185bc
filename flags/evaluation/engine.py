"""The evaluation engine: pure Python, no Django.

`compile_snapshot(data)` turns the plain snapshot of one environment (see
`flags.snapshot_builder`) into an immutable `Snapshot` whose rules are compiled once:
regexes compiled, value sets built, versions parsed, segments resolved, splits turned into
bucket boundaries. `evaluate(snapshot, flag_key, context)` then walks, in order: off →
individual targets → rules → default rule, and returns an OpenFeature-shaped
`EvaluationResult`. It never raises: anything unexpected becomes reason ERROR.

Keys and units. Each flag's targeting names an *assignment unit*: the context attribute
(`targetingKey`, `accountId`, `conversationId`, …) that percentage splits bucket on. Its
value is the *unit key*: individual targets and segment key lists are matched against it.
A split reached without a unit key is an error (TARGETING_KEY_MISSING) rather than a
silent bucketing on some other attribute.

Bucketing. bucket = blake2b("{flag key}.{salt}.{unit key}") as a 64-bit integer mod
100 000. A split lists variations with weights (thousandths of a percent); the bucket falls
into the first variation whose cumulative weight exceeds it. The hash depends on neither
the process nor the release, and widening the last-listed (candidate) variation only ever
adds buckets to it: a unit served the candidate at 5 % still gets it at 50 %.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from flags.evaluation.semver import SemVer, parse_semver
from flags.evaluation.targeting_schema import (
    SEGMENT_OPERATOR,
    SPLIT_TOTAL,
    validate_rules,
    validate_segment_rules,
    validate_serve,
    validate_targets,
)

BUCKETS = SPLIT_TOTAL  # 100 000 buckets: splits resolve to a thousandth of a percent


class Reason:
    STATIC = "STATIC"
    DEFAULT = "DEFAULT"
    TARGETING_MATCH = "TARGETING_MATCH"
    SPLIT = "SPLIT"
    DISABLED = "DISABLED"
    ERROR = "ERROR"


class ErrorCode:
    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    INVALID_CONTEXT = "INVALID_CONTEXT"
    PARSE_ERROR = "PARSE_ERROR"
    GENERAL = "GENERAL"


class EvaluationResult:
    """OpenFeature-shaped outcome. Results of successful evaluations are built once per
    snapshot (one per flag × outcome) and shared: treat them, and their metadata, as read-only."""

    __slots__ = ("flag_key", "value", "variant", "reason", "error_code", "error_details", "metadata")

    def __init__(self, flag_key: str, value: Any = None, variant: str | None = None, reason: str = Reason.ERROR,
                 error_code: str | None = None, error_details: str | None = None,
                 metadata: dict[str, str | int | float | bool] | None = None) -> None:
        self.flag_key = flag_key
        self.value = value
        self.variant = variant
        self.reason = reason
        self.error_code = error_code
        self.error_details = error_details
        self.metadata = metadata if metadata is not None else {}

    @property
    def is_error(self) -> bool:
        return self.error_code is not None

    def __repr__(self) -> str:
        return (f"EvaluationResult({self.flag_key!r}, variant={self.variant!r}, reason={self.reason!r}, "
                f"error_code={self.error_code!r})")


class SnapshotError(ValueError):
    """The snapshot as a whole is unusable (not the shape the builder writes)."""


# --- compiled pieces -----------------------------------------------------------------------

Context = Mapping[str, Any]
# A matcher answers for (context, unit key); compiled once per snapshot.
Matcher = Callable[[Context, "str | None"], bool]


def bucket_of(flag_key: str, salt: str, unit_key: str) -> int:
    digest = hashlib.blake2b(f"{flag_key}.{salt}.{unit_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True, slots=True)
class CompiledServe:
    result: EvaluationResult | None  # a single variation's prebuilt result, or None for a split
    bounds: tuple[tuple[int, EvaluationResult], ...] = ()  # (cumulative upper bound, result) for a split

    def pick(self, bucket: int) -> EvaluationResult:
        for upper, result in self.bounds:
            if bucket < upper:
                return result
        return self.bounds[-1][1]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    matchers: tuple[Matcher, ...]
    serve: CompiledServe


@dataclass(frozen=True, slots=True)
class CompiledFlag:
    key: str
    salt: str
    enabled: bool
    disabled: EvaluationResult  # the fallback, served when off
    targets: Mapping[str, EvaluationResult]
    rules: tuple[CompiledRule, ...]
    default: CompiledServe
    assignment_unit: str
    static: bool
    broken: str | None = None  # why the flag's configuration could not be compiled
    id: int = 0  # the catalog row (telemetry stores it); 0 when the snapshot data has none
    variation_keys: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Snapshot:
    environment_id: int
    environment_key: str
    version: int
    flags: Mapping[str, CompiledFlag]
    sdk_keys: Mapping[str, bool]  # key hash -> revoked
    built_at: float = 0.0
    changed_at: float = 0.0  # when the environment's version last moved (Unix seconds; 0 if never)


# --- clause compilation --------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalar_key(value: Any) -> tuple[str, Any]:
    """Set membership that keeps True apart from 1 and "1" apart from 1."""
    if isinstance(value, bool):
        return ("b", value)
    if _is_number(value):
        return ("n", float(value))
    return ("s", value) if isinstance(value, str) else ("?", repr(value))


def _value_test(op: str, values: list[Any]) -> Callable[[Any], bool]:
    """A predicate on one context value (lists in the context match when any element does)."""
    if op in ("equals", "in", "not_in"):
        strings = frozenset(v for v in values if type(v) is str)
        others = frozenset(_scalar_key(v) for v in values if type(v) is not str)
        if not others:
            return lambda value: type(value) is str and value in strings

        def membership(value: Any) -> bool:
            if type(value) is str:
                return value in strings
            return _scalar_key(value) in others

        return membership
    if op == "starts_with":
        prefixes = tuple(values)
        return lambda value: isinstance(value, str) and value.startswith(prefixes)
    if op == "ends_with":
        suffixes = tuple(values)
        return lambda value: isinstance(value, str) and value.endswith(suffixes)
    if op == "contains":
        parts = tuple(values)
        return lambda value: isinstance(value, str) and any(p in value for p in parts)
    if op == "matches":
        patterns = tuple(re.compile(v) for v in values)
        return lambda value: isinstance(value, str) and any(p.search(value) for p in patterns)
    if op in ("lt", "lte", "gt", "gte"):
        bound_checks = {
            "lt": lambda value, b: value < b, "lte": lambda value, b: value <= b,
            "gt": lambda value, b: value > b, "gte": lambda value, b: value >= b,
        }[op]
        bounds = tuple(values)
        return lambda value: _is_number(value) and any(bound_checks(value, b) for b in bounds)
    if op.startswith("semver_"):
        versions: tuple[SemVer, ...] = tuple(parse_semver(v) for v in values)  # type: ignore[misc]
        compare = {
            "semver_eq": lambda a, b: not a < b and not b < a, "semver_lt": lambda a, b: a < b,
            "semver_lte": lambda a, b: a <= b, "semver_gt": lambda a, b: a > b,
            "semver_gte": lambda a, b: a >= b,
        }[op]

        def semver_test(value: Any) -> bool:
            parsed = parse_semver(value)
            return parsed is not None and any(compare(parsed, v) for v in versions)

        return semver_test
    raise SnapshotError(f"unknown operator {op!r}")


def _compile_clause(clause: Mapping[str, Any], segments: Mapping[str, Matcher]) -> Matcher:
    op = clause["op"]
    negate = bool(clause.get("negate", False))
    if op == SEGMENT_OPERATOR:
        members = tuple(segments[key] for key in clause["values"])

        def in_segment(context: Context, unit_key: str | None) -> bool:
            return any(member(context, unit_key) for member in members) != negate

        return in_segment
    attribute = clause["attribute"]
    test = _value_test(op, list(clause["values"]))
    exclude = op == "not_in"  # "not one of" is the negation of "one of"
    flip = negate != exclude

    def attribute_clause(context: Context, unit_key: str | None) -> bool:
        value = context.get(attribute)
        if value is None:
            return False  # a missing attribute matches nothing, negated or not
        if type(value) is list:
            return any(test(item) for item in value) != flip
        return test(value) != flip

    return attribute_clause


def _compile_segments(data: Mapping[str, Any]) -> dict[str, Matcher]:
    """Segments may refer to segments (never in a cycle: the services refuse one); each is
    compiled once, after the segments it names."""
    compiled: dict[str, Matcher] = {}
    resolving: set[str] = set()

    def compile_one(key: str) -> Matcher:
        if key in compiled:
            return compiled[key]
        if key in resolving:
            raise SnapshotError(f"segment {key!r} refers to itself")
        if key not in data:
            raise SnapshotError(f"unknown segment {key!r}")
        resolving.add(key)
        segment = data[key]
        if validate_segment_rules(segment.get("rules", [])):
            raise SnapshotError(f"segment {key!r} has invalid rules")
        nested = {
            name: compile_one(name)
            for rule in segment.get("rules", [])
            for clause in rule["clauses"]
            if clause.get("op") == SEGMENT_OPERATOR
            for name in clause["values"]
        }
        included = frozenset(segment.get("included_keys", ()))
        excluded = frozenset(segment.get("excluded_keys", ()))
        rules = tuple(tuple(_compile_clause(c, nested) for c in rule["clauses"]) for rule in segment.get("rules", []))

        def member(context: Context, unit_key: str | None) -> bool:
            if unit_key is not None:
                if unit_key in included:
                    return True
                if unit_key in excluded:
                    return False
            return any(all(m(context, unit_key) for m in rule) for rule in rules)

        compiled[key] = member
        resolving.discard(key)
        return member

    for key in data:
        try:
            compile_one(key)
        except SnapshotError:
            resolving.clear()
            # A broken segment matches nobody; flags that use it are marked broken below.
    return compiled


def _compile_serve(serve: Mapping[str, Any], outcome: Callable[[str], EvaluationResult],
                   split_outcome: Callable[[str], EvaluationResult]) -> CompiledServe:
    if "variation" in serve:
        return CompiledServe(result=outcome(serve["variation"]))
    bounds: list[tuple[int, EvaluationResult]] = []
    cumulative = 0
    for bucket in serve["split"]:
        if bucket["weight"] <= 0:
            continue
        cumulative += bucket["weight"]
        bounds.append((cumulative, split_outcome(bucket["variation"])))
    return CompiledServe(result=None, bounds=tuple(bounds))


def _compile_flag(key: str, data: Mapping[str, Any], segments: Mapping[str, Matcher],
                  environment_version: int) -> CompiledFlag:
    targeting = data["targeting"]
    variations = dict(data["variations"])
    base_metadata = {
        "flagVersion": int(data.get("version", 1)),
        "targetingVersion": int(targeting.get("version", 1)),
        "environmentVersion": environment_version,
    }

    def result(variation: str, reason: str, **extra: Any) -> EvaluationResult:
        return EvaluationResult(flag_key=key, value=variations[variation], variant=variation, reason=reason,
                                metadata={**base_metadata, **extra})

    problems = (
        validate_targets(targeting.get("targets", []), variations)
        + validate_rules(targeting.get("rules", []), variations)
        + validate_serve(targeting.get("default_serve"), variations, "default")
    )
    missing_segments = {
        name for rule in targeting.get("rules", []) if isinstance(rule, dict)
        for clause in rule.get("clauses", []) if isinstance(clause, dict) and clause.get("op") == SEGMENT_OPERATOR
        for name in clause.get("values", []) if name not in segments
    }
    if data["fallback"] not in variations:
        raise SnapshotError(f"flag {key!r}: the fallback is not a variation")
    base = {"key": key, "salt": str(data.get("salt", "")), "enabled": bool(targeting["enabled"]),
            "disabled": result(data["fallback"], Reason.DISABLED),
            "assignment_unit": str(targeting.get("assignment_unit") or "targetingKey"),
            "id": int(data.get("id") or 0), "variation_keys": frozenset(variations)}
    if problems or missing_segments:
        detail = "; ".join(str(p) for p in problems[:3]) or f"unknown segments {sorted(missing_segments)}"
        return CompiledFlag(targets={}, rules=(), default=CompiledServe(result=None), static=False, broken=detail,
                            **base)
    target_results: dict[str, EvaluationResult] = {}
    for target in targeting.get("targets", []):
        matched = result(target["variation"], Reason.TARGETING_MATCH, matchedTarget=True)
        for unit in target["values"]:
            target_results[unit] = matched
    rules = []
    for index, rule in enumerate(targeting.get("rules", [])):
        rule_id = str(rule.get("id") or index)
        rules.append(CompiledRule(
            matchers=tuple(_compile_clause(c, segments) for c in rule["clauses"]),
            serve=_compile_serve(
                rule["serve"],
                lambda v, rule_id=rule_id, index=index: result(v, Reason.TARGETING_MATCH, ruleId=rule_id,
                                                               ruleIndex=index),
                lambda v, rule_id=rule_id, index=index: result(v, Reason.SPLIT, ruleId=rule_id, ruleIndex=index),
            ),
        ))
    static = not target_results and not rules and "variation" in targeting["default_serve"]
    default = _compile_serve(
        targeting["default_serve"],
        lambda v: result(v, Reason.STATIC if static else Reason.DEFAULT),
        lambda v: result(v, Reason.SPLIT),
    )
    return CompiledFlag(targets=MappingProxyType(target_results), rules=tuple(rules), default=default,
                        static=static, **base)


def compile_snapshot(data: Mapping[str, Any]) -> Snapshot:
    """Compile the plain snapshot of one environment. A flag whose configuration cannot be
    compiled is kept, marked broken: it evaluates to ERROR (PARSE_ERROR), never raises."""
    try:
        environment = data["environment"]
        segments = _compile_segments(data.get("segments", {}))
        version = int(environment["version"])
        flags = {key: _compile_flag(key, flag, segments, version) for key, flag in data.get("flags", {}).items()}
        return Snapshot(
            environment_id=int(environment["id"]), environment_key=str(environment["key"]),
            version=version, flags=MappingProxyType(flags),
            sdk_keys=MappingProxyType(dict(data.get("sdk_keys", {}))), built_at=float(data.get("built_at", 0.0)),
            changed_at=float(environment.get("changed_at") or 0.0),
        )
    except (KeyError, TypeError, AttributeError, re.error) as exc:
        raise SnapshotError(f"snapshot is malformed: {exc!r}") from exc


# --- evaluation ----------------------------------------------------------------------------


def _unit_key(context: Context, attribute: str) -> str | None:
    value = context.get(attribute)
    if type(value) is str:
        return value or None
    if value is None or isinstance(value, bool):
        return None
    if _is_number(value):
        return str(value)
    return None


def _error(flag_key: str, code: str, details: str) -> EvaluationResult:
    return EvaluationResult(flag_key=flag_key, reason=Reason.ERROR, error_code=code, error_details=details)


def context_problem(context: Any) -> str | None:
    """Why a context is not usable, or None. The shape is OpenFeature's: an object with an
    optional string targetingKey and attributes."""
    if type(context) is not dict and not isinstance(context, Mapping):
        return "the evaluation context must be a JSON object"
    key = context.get("targetingKey")
    if key is not None and type(key) is not str:
        return "targetingKey must be a string"
    return None


def evaluate(snapshot: Snapshot, flag_key: str, context: Context) -> EvaluationResult:
    """Evaluate one flag for one context. Never raises."""
    try:
        flag = snapshot.flags.get(flag_key)
        if flag is None:
            return _error(flag_key, ErrorCode.FLAG_NOT_FOUND, f"flag {flag_key!r} was not found")
        problem = context_problem(context)
        if problem:
            return _error(flag_key, ErrorCode.INVALID_CONTEXT, problem)
        if not flag.enabled:
            return flag.disabled
        if flag.broken:
            return _error(flag.key, ErrorCode.PARSE_ERROR, f"flag configuration is invalid: {flag.broken}")
        if flag.static:
            return flag.default.result  # type: ignore[return-value]
        unit_key = _unit_key(context, flag.assignment_unit)
        if unit_key is not None and flag.targets:
            targeted = flag.targets.get(unit_key)
            if targeted is not None:
                return targeted
        for rule in flag.rules:
            for matcher in rule.matchers:
                if not matcher(context, unit_key):
                    break
            else:
                return _serve(flag, rule.serve, unit_key)
        return _serve(flag, flag.default, unit_key)
    except Exception as exc:  # noqa: BLE001 - the engine's contract is to never raise
        return _error(flag_key, ErrorCode.GENERAL, f"evaluation failed: {type(exc).__name__}")


def _serve(flag: CompiledFlag, serve: CompiledServe, unit_key: str | None) -> EvaluationResult:
    if serve.result is not None:
        return serve.result
    if unit_key is None:
        return _error(flag.key, ErrorCode.TARGETING_KEY_MISSING,
                      f"a percentage split needs the assignment unit {flag.assignment_unit!r} in the context")
    return serve.pick(bucket_of(flag.key, flag.salt, unit_key))


def evaluate_all(snapshot: Snapshot, context: Context) -> list[EvaluationResult]:
    """Every flag of the environment, for bulk evaluation."""
    problem = context_problem(context)
    if problem:
        raise ValueError(problem)
    return [evaluate(snapshot, key, context) for key in snapshot.flags]
