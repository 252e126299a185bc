"""Validating and storing a batch of exposure and outcome events (the events API's work).

Validation is plain Python against the environment's compiled snapshot (flag keys → ids and
variation keys, no query) and a small per-process cache of the project's metric keys.
Storage is one transaction: the batch row, inserted with ON CONFLICT DO NOTHING on
(environment, batch_id), decides whether this is the first delivery; only then are the
events written, with one COPY on PostgreSQL (one multi-row INSERT elsewhere). A retry,
even one racing the original, waits for it on the unique index and answers its counts.
"""

from __future__ import annotations

import datetime
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, transaction

from flags.evaluation.engine import Snapshot
from telemetry.constants import (
    MAX_BATCH_ID_LENGTH,
    MAX_EVENTS_PER_BATCH,
    MAX_FUTURE,
    MAX_KEY_LENGTH,
    MAX_PAST,
    MAX_UNIT_LENGTH,
    EventKind,
)
from telemetry.models import Event, EventBatch, Metric

EXPOSURE_FIELDS = frozenset({"kind", "flag", "variant", "served", "unit", "time"})
OUTCOME_FIELDS = frozenset({"kind", "metric", "value", "unit", "time", "flag", "variant"})
BATCH_FIELDS = frozenset({"batch_id", "events"})
# (kind, flag_id, variant, served, metric_id, value, unit, occurred_at)
Row = tuple[str, int | None, str, str, int | None, float | None, str, datetime.datetime]


class BatchError(Exception):
    """The request as a whole is refused: status, a stable code, words for the developer."""

    def __init__(self, status: int, code: str, details: str) -> None:
        super().__init__(details)
        self.status, self.code, self.details = status, code, details


@dataclass
class BatchResult:
    accepted: int
    rejected: list[dict[str, Any]] = field(default_factory=list)
    replayed: bool = False  # a retry of a batch_id already stored: nothing was written

    def body(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": self.rejected}


# --- the request body ----------------------------------------------------------------------


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def text_problem(value: str) -> str | None:
    """Why a string cannot be stored (NUL bytes, lone UTF-16 surrogates), or None."""
    if "\x00" in value:
        return "Must not contain NUL characters."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "Must be valid Unicode (no lone surrogates)."
    return None


def _printable_name(name: str) -> str:
    """A field name fit to echo back and store: NUL and lone surrogates escaped, at most 100 characters."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")[:100]


def parse_batch(body: bytes) -> tuple[str, list[Any]]:
    """The batch id and the raw events, or BatchError for a body of the wrong shape."""
    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BatchError(400, "INVALID_JSON", "The body is not valid JSON.") from exc
    if not isinstance(payload, dict):
        raise BatchError(400, "INVALID_BATCH", 'The body must be a JSON object: {"batch_id": "...", "events": [...]}.')
    unknown = sorted(set(payload) - BATCH_FIELDS)
    if unknown:
        raise BatchError(400, "INVALID_BATCH", f"Unknown fields: {', '.join(map(_printable_name, unknown))}.")
    batch_id, events = payload.get("batch_id"), payload.get("events")
    if not isinstance(batch_id, str) or not 1 <= len(batch_id) <= MAX_BATCH_ID_LENGTH or not batch_id.strip():
        raise BatchError(400, "INVALID_BATCH_ID",
                         f"batch_id must be a non-blank string of 1 to {MAX_BATCH_ID_LENGTH} characters.")
    problem = text_problem(batch_id)
    if problem:
        raise BatchError(400, "INVALID_BATCH_ID", f"batch_id: {problem}")
    if not isinstance(events, list) or not events:
        raise BatchError(400, "INVALID_BATCH", "events must be a non-empty JSON array.")
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise BatchError(413, "TOO_MANY_EVENTS",
                         f"A batch holds at most {MAX_EVENTS_PER_BATCH} events; this one has {len(events)}.")
    return batch_id, events


# --- one event -----------------------------------------------------------------------------


def _text(event: dict[str, Any], name: str, limit: int, errors: dict[str, str], *, required: bool = True) -> str:
    value = event.get(name)
    if value is None:
        if required:
            errors[name] = "This field is required."
        return ""
    if not isinstance(value, str) or not value.strip():
        errors[name] = "Must be a non-blank string."
        return ""
    if len(value) > limit:
        errors[name] = f"At most {limit} characters."
        return ""
    problem = text_problem(value)
    if problem:
        errors[name] = problem
        return ""
    return value


def _time(event: dict[str, Any], now: datetime.datetime, errors: dict[str, str]) -> datetime.datetime | None:
    value = event.get("time")
    if value is None:
        errors["time"] = "This field is required."
        return None
    when = None
    if isinstance(value, str) and len(value) <= 40 and "T" in value.upper():
        try:
            when = datetime.datetime.fromisoformat(value)
        except ValueError:
            when = None
    if when is None or when.tzinfo is None:
        errors["time"] = "Must be an RFC 3339 date-time with a time zone, e.g. 2026-11-21T10:15:00Z."
        return None
    try:
        # Years 1 and 9999 with an offset overflow when converted to UTC.
        when = when.astimezone(datetime.UTC)
    except OverflowError:
        errors["time"] = "Out of range once converted to UTC."
        return None
    if when < now - MAX_PAST:
        errors["time"] = f"More than {MAX_PAST.days} days old."
    elif when > now + MAX_FUTURE:
        errors["time"] = f"More than {int(MAX_FUTURE.total_seconds() // 60)} minutes in the future."
    return when


def validate_event(event: Any, *, snapshot: Snapshot, metric_ids: MetricIds,
                   now: datetime.datetime) -> tuple[Row | None, dict[str, str]]:
    """The row to store, or the problems by field name."""
    if not isinstance(event, dict):
        return None, {"event": "Must be a JSON object."}
    kind = event.get("kind")
    if kind not in EventKind.values:
        return None, {"kind": 'Must be "exposure" or "outcome".'}
    errors: dict[str, str] = {}
    allowed = EXPOSURE_FIELDS if kind == EventKind.EXPOSURE else OUTCOME_FIELDS
    for name in sorted(set(event) - allowed):
        errors[_printable_name(str(name))] = f"Unknown field for a {kind} event."
    unit = _text(event, "unit", MAX_UNIT_LENGTH, errors)
    when = _time(event, now, errors)
    flag_key = _text(event, "flag", MAX_KEY_LENGTH, errors, required=kind == EventKind.EXPOSURE)
    variant = _text(event, "variant", MAX_KEY_LENGTH, errors, required=kind == EventKind.EXPOSURE)
    flag = snapshot.flags.get(flag_key) if flag_key else None
    if flag_key and flag is None:
        errors["flag"] = f"Unknown flag {flag_key!r} in this environment."
    if flag is not None and variant and flag.variation_keys and variant not in flag.variation_keys:
        errors["variant"] = f"{variant!r} is not a variation of {flag_key!r}."
    if kind == EventKind.EXPOSURE:
        served = _text(event, "served", MAX_KEY_LENGTH, errors)
        if errors:
            return None, errors
        return (kind, flag.id, variant, served, None, None, unit, when), {}  # type: ignore[union-attr,return-value]
    if variant and not flag_key and "variant" not in errors:
        errors["variant"] = "A variant needs its flag."
    metric_key = _text(event, "metric", MAX_KEY_LENGTH, errors)
    metric_id = metric_ids.lookup(snapshot.environment_id, metric_key) if metric_key else None
    if metric_key and metric_id is None:
        errors["metric"] = f"Unknown metric {metric_key!r} in this project."
    value = event.get("value")
    number: float | None = None
    if value is None:
        errors["value"] = "This field is required."
    elif isinstance(value, bool) or not isinstance(value, int | float):
        errors["value"] = "Must be a number."
    else:
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            errors["value"] = "Must be a finite number."
    if errors:
        return None, errors
    return (kind, flag.id if flag else None, variant, "", metric_id, number, unit, when), {}  # type: ignore[return-value]


def validate_events(events: list[Any], *, snapshot: Snapshot, metric_ids: MetricIds,
                    now: datetime.datetime) -> tuple[list[Row], list[dict[str, Any]]]:
    rows: list[Row] = []
    rejected: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        row, errors = validate_event(event, snapshot=snapshot, metric_ids=metric_ids, now=now)
        if row is None:
            rejected.append({"index": index, "errors": errors})
        else:
            rows.append(row)
    return rows, rejected


# --- metric keys, per process --------------------------------------------------------------


class MetricIds:
    """Metric key → id per environment (its project's metrics), cached in the process.

    Reloaded every `ttl` seconds, and at once (at most every `miss_seconds`) when a key is
    not found, so a metric created a moment ago is accepted on the next batch.
    """

    def __init__(self, *, ttl: float = 30.0, miss_seconds: float = 1.0) -> None:
        self.ttl, self.miss_seconds = ttl, miss_seconds
        self._by_environment: dict[int, tuple[float, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def _load(self, environment_id: int) -> dict[str, int]:
        ids = dict(Metric.objects.filter(project__environments=environment_id).values_list("key", "id"))
        self._by_environment[environment_id] = (time.monotonic(), ids)
        return ids

    def lookup(self, environment_id: int, key: str) -> int | None:
        loaded_at, ids = self._by_environment.get(environment_id, (-math.inf, {}))
        age = time.monotonic() - loaded_at
        if age > self.ttl or (key not in ids and age > self.miss_seconds):
            with self._lock:
                ids = self._load(environment_id)
        return ids.get(key)

    def clear(self) -> None:
        self._by_environment = {}


metric_ids = MetricIds()


# --- storing -------------------------------------------------------------------------------

_COLUMNS = ("txid", "environment_id", "kind", "flag_id", "variant", "served", "metric_id", "value", "unit",
            "occurred_at", "received_at")


def store_batch(*, environment_id: int, batch_id: str, rows: list[Row], rejected: list[dict[str, Any]],
                now: datetime.datetime) -> BatchResult:
    """Store a validated batch once per (environment, batch_id)."""
    table = EventBatch._meta.db_table
    postgres = connection.vendor == "postgresql"
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (environment_id, batch_id, accepted, rejected, received_at) "  # noqa: S608 - our table name
                f"VALUES (%s, %s, %s, {'%s::jsonb' if postgres else '%s'}, %s) "
                "ON CONFLICT (environment_id, batch_id) DO NOTHING RETURNING id",
                [environment_id, batch_id, len(rows), json.dumps(rejected), now])
            inserted = cursor.fetchone() is not None
            if not inserted:
                first = EventBatch.objects.get(environment_id=environment_id, batch_id=batch_id)
                return BatchResult(first.accepted, first.rejected, replayed=True)
            if rows and postgres:
                _copy_rows(cursor, environment_id, rows, now)
        if rows and not postgres:
            Event.objects.bulk_create([
                Event(environment_id=environment_id, kind=kind, flag_id=flag_id, variant=variant, served=served,
                      metric_id=metric_id, value=value, unit=unit, occurred_at=occurred_at, received_at=now)
                for kind, flag_id, variant, served, metric_id, value, unit, occurred_at in rows], batch_size=500)
    return BatchResult(len(rows), rejected)


def _copy_rows(cursor: Any, environment_id: int, rows: list[Row], now: datetime.datetime) -> None:
    cursor.execute("SELECT pg_current_xact_id()::text::bigint")
    txid = cursor.fetchone()[0]
    statement = f"COPY {Event._meta.db_table} ({', '.join(_COLUMNS)}) FROM STDIN"
    with cursor.cursor.copy(statement) as copy:
        for kind, flag_id, variant, served, metric_id, value, unit, occurred_at in rows:
            copy.write_row((txid, environment_id, kind, flag_id, variant, served, metric_id, value, unit,
                            occurred_at, now))
