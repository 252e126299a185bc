"""Generated bodies against our own public endpoints, through the real WSGI application
in-process: `POST /api/v1/events` and `POST /ofrep/v1/evaluate/flags[/{key}]` must never
answer 5xx, whatever the body (issue 15). Over 5,000 requests in all, every CI run.

The bodies mix raw bytes, arbitrary JSON, and near-valid documents (real flag, variation and
metric keys beside NUL bytes, lone surrogates, extreme dates, huge numbers, deep nesting),
so the generator reaches the validators and the database writes, not only the parser.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from audit.services import SystemActor
from flags import services
from flags.demo import seed_demo
from flags.models import Environment
from flags.snapshot_store import reset_store
from telemetry import ingest
from telemetry.demo import seed_demo_metrics
from tests.ofrep_client import call

pytestmark = pytest.mark.django_db
ACTOR = SystemActor("fuzz")
FUZZ: dict[str, Any] = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                      HealthCheck.data_too_large, HealthCheck.filter_too_much],
                database=None)
EVENTS_EXAMPLES = 2_600
OFREP_EXAMPLES = 1_300  # for each of the bulk and the single-flag path
assert EVENTS_EXAMPLES + 2 * OFREP_EXAMPLES >= 5_000

FLAGS = ["support_assistant_profile", "support_agent_tool_mode", "support_ai_incident_fallback"]
VARIANTS = ["baseline_v3", "citation_first_v4", "read_only", "write", "off"]
METRICS = ["latency_p95", "resolved_without_escalation"]
NASTY = ["", " ", "\x00", "a\x00b", "\ud800", "x\udfffy", "\U0001f600", "\u202e", "T", "null", "é" * 300,
         "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59+14:00",
         "2026-13-01T00:00:00Z", "2026-01-01T00:00:00", "2026-01-01T25:00:00Z", "[" * 50, "{" * 50]


@pytest.fixture
def sdk_key(db: None) -> Iterator[str]:
    reset_store(None)
    ingest.metric_ids.clear()
    project, _ = seed_demo()
    seed_demo_metrics(project)
    environment = Environment.objects.get(project=project, key="production")
    yield services.sdk_key_create(environment=environment, name="fuzz", actor=ACTOR)[1]
    reset_store(None)
    ingest.metric_ids.clear()


def _recent() -> st.SearchStrategy[str]:
    return st.integers(-3 * 86400, 3600).map(
        lambda seconds: (timezone.now() - datetime.timedelta(seconds=seconds)).isoformat())


texts = st.one_of(st.text(max_size=30), st.sampled_from(NASTY),
                  st.lists(st.sampled_from(NASTY + ["a", "1"]), max_size=4).map("".join))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**320),
                    st.floats(allow_nan=True, allow_infinity=True), texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(texts, inner, max_size=4)), max_leaves=12)


def _field(known: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(known), st.sampled_from(known).map(lambda k: k + "\x00"), texts, json_values)


event_fields = {
    "kind": st.one_of(st.sampled_from(["exposure", "outcome"]), texts),
    "flag": _field(FLAGS), "variant": _field(VARIANTS), "served": _field(VARIANTS), "metric": _field(METRICS),
    "unit": st.one_of(st.text(min_size=1, max_size=20), texts, json_values),
    "time": st.one_of(_recent(), st.sampled_from(NASTY), texts, json_values),
    "value": scalars,
}
units = st.text(min_size=1, max_size=20).filter(str.strip)
# Mostly valid events, one field at a time allowed to go wrong, so that batches reach storage.
near_valid_events = st.one_of(
    st.fixed_dictionaries({"kind": st.just("exposure"), "flag": st.just(FLAGS[0]),
                           "variant": st.sampled_from(["baseline_v3", "citation_first_v4"]),
                           "served": st.one_of(st.sampled_from(VARIANTS), units), "unit": units,
                           "time": st.one_of(_recent(), _recent(), st.sampled_from(NASTY))}),
    st.fixed_dictionaries({"kind": st.just("outcome"), "metric": st.sampled_from(METRICS),
                           "value": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers()),
                           "unit": st.one_of(units, units, texts), "time": _recent()}),
)
events = st.one_of(
    near_valid_events, near_valid_events,
    st.fixed_dictionaries({}, optional={**event_fields, **{name: json_values for name in ("extra", "\x00", "\ud800")}}),
    json_values)
batch_ids = st.one_of(st.uuids().map(str), texts, json_values, st.text(min_size=200, max_size=300))


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()


event_bodies = st.one_of(
    st.builds(lambda batch_id, evs: _dump({"batch_id": batch_id, "events": evs}),
              batch_ids, st.lists(events, min_size=0, max_size=8)),
    st.builds(lambda batch_id, evs, extra: _dump({"batch_id": batch_id, "events": evs, **extra}),
              batch_ids, st.lists(events, max_size=3), st.dictionaries(texts, json_values, max_size=2)),
    json_values.map(_dump),
    st.binary(max_size=200),
    st.integers(1, 30_000).map(lambda depth: b'{"batch_id":"d","events":[' + b"[" * depth + b"]" * depth + b"]}"),
)

context_values = st.one_of(json_values, st.sampled_from(FLAGS + VARIANTS + ["internal_users", "acct-1"]))
contexts = st.one_of(
    st.fixed_dictionaries({}, optional={"targetingKey": st.one_of(texts, json_values), "accountId": context_values,
                                        "plan": context_values, "segment": context_values, "\x00": context_values,
                                        "\ud800": context_values}),
    json_values)
ofrep_bodies = st.one_of(
    contexts.map(lambda context: _dump({"context": context})),
    st.builds(lambda context, extra: _dump({"context": context, **extra}), contexts,
              st.dictionaries(texts, json_values, max_size=2)),
    json_values.map(_dump),
    st.binary(max_size=200),
    st.integers(1, 30_000).map(lambda depth: b'{"context":{"a":' + b"[" * depth + b"]" * depth + b"}}"),
)


def _assert_no_5xx(response: Any, body: bytes) -> None:
    assert response.status < 500, (response.status, response.body, body[:300])
    answer = json.loads(response.body) if response.body else {}  # every answer, refusals included, is JSON
    # Shown by --hypothesis-show-statistics: how far the bodies got (refused, rejected, stored).
    event(f"{response.status} {answer.get('errorCode', 'stored' if answer.get('accepted') else '')}".strip())


@settings(max_examples=EVENTS_EXAMPLES, **FUZZ)
@given(body=event_bodies)
def test_events_endpoint__generated_bodies__never_5xx(sdk_key: str, body: bytes) -> None:
    response = call("POST", "/api/v1/events", body=body, headers={"Authorization": f"Bearer {sdk_key}"})
    _assert_no_5xx(response, body)


@settings(max_examples=OFREP_EXAMPLES, **FUZZ)
@given(body=ofrep_bodies)
def test_ofrep_bulk__generated_bodies__never_5xx(sdk_key: str, body: bytes) -> None:
    response = call("POST", "/ofrep/v1/evaluate/flags", body=body, headers={"Authorization": f"Bearer {sdk_key}"})
    _assert_no_5xx(response, body)


@settings(max_examples=OFREP_EXAMPLES, **FUZZ)
@given(body=ofrep_bodies, flag_key=st.one_of(st.sampled_from(FLAGS), st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="/?#"), min_size=1, max_size=20)))
def test_ofrep_single__generated_bodies__never_5xx(sdk_key: str, body: bytes, flag_key: str) -> None:
    response = call("POST", f"/ofrep/v1/evaluate/flags/{flag_key}", body=body,
                    headers={"Authorization": f"Bearer {sdk_key}"})
    _assert_no_5xx(response, body)
