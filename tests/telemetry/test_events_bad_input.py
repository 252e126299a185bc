"""Inputs that once made the events API answer 500 or a misleading 503 (issue 15 item 3):
each gets its documented 4xx, or a per-event rejection by index, and stores nothing bad."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from telemetry.models import Event, EventBatch
from tests.telemetry.conftest import exposure, outcome

pytestmark = pytest.mark.django_db
Post = Callable[..., Any]

EXTREME_TIMES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]


@pytest.mark.parametrize("time", EXTREME_TIMES)
def test_event_time__overflows_on_normalising__rejected_time_neighbours_stored(post: Post, time: str) -> None:
    response = post([exposure("a", time=time), exposure("b")])
    assert response.status == 200, response.body
    assert response.json()["accepted"] == 1
    assert response.json()["rejected"] == [{"index": 0, "errors": {"time": response.json()["rejected"][0]["errors"]["time"]}}]
    assert Event.objects.get().unit == "b"


STRING_FIELDS = {"exposure": ("flag", "variant", "served", "unit", "time"), "outcome": ("metric", "unit", "time")}


@pytest.mark.parametrize("kind,field", [(k, f) for k, fields in STRING_FIELDS.items() for f in fields])
@pytest.mark.parametrize("bad", ["\x00", "\ud800"], ids=["nul", "lone_surrogate"])
def test_event_string__nul_or_lone_surrogate__rejected_by_field_neighbours_stored(
        post: Post, kind: str, field: str, bad: str) -> None:
    event = exposure("a") if kind == "exposure" else outcome("a", "latency_p95", 3.0)
    event[field] = event[field][:4] + bad + event[field][4:]
    response = post(None, body=json.dumps({"batch_id": uuid.uuid4().hex, "events": [event, exposure("b")]}))
    assert response.status == 200, response.body
    assert response.json()["accepted"] == 1
    [rejected] = response.json()["rejected"]
    assert rejected["index"] == 0 and field in rejected["errors"]
    assert Event.objects.get().unit == "b"


@pytest.mark.parametrize("bad", ["\x00", "\ud800"], ids=["nul", "lone_surrogate"])
def test_unknown_field_name__nul_or_lone_surrogate__rejected_not_500(post: Post, bad: str) -> None:
    event = {**exposure("a"), f"x{bad}": 1}
    response = post(None, body=json.dumps({"batch_id": uuid.uuid4().hex, "events": [event, exposure("b")]}))
    assert response.status == 200, response.body
    assert response.json()["accepted"] == 1 and response.json()["rejected"][0]["index"] == 0
    json.dumps(EventBatch.objects.get().rejected).encode()  # the stored rejection is clean text


@pytest.mark.parametrize("bad", ["ab\x00cd", "ab\ud800cd"], ids=["nul", "lone_surrogate"])
def test_batch_id__nul_or_lone_surrogate__400_invalid_batch_id_nothing_stored(post: Post, bad: str) -> None:
    for _ in range(2):  # never a 503 "retry" that cannot succeed
        response = post(None, body=json.dumps({"batch_id": bad, "events": [exposure("a")]}))
        assert response.status == 400, response.body
        assert response.json()["errorCode"] == "INVALID_BATCH_ID"
    assert not Event.objects.exists() and not EventBatch.objects.exists()


def test_body__nested_deep_under_limit__400_invalid_json(post: Post) -> None:
    body = "[" * 20_000 + "]" * 20_000
    response = post(None, body=body)
    assert response.status == 400 and response.json()["errorCode"] == "INVALID_JSON"


@pytest.mark.parametrize("bad", ["\x00", "\ud800"], ids=["nul", "lone_surrogate"])
def test_unknown_batch_field__nul_or_lone_surrogate__400_invalid_batch(post: Post, bad: str) -> None:
    response = post(None, body=json.dumps({"batch_id": "b", "events": [exposure("a")], bad: 1}))
    assert response.status == 400 and response.json()["errorCode"] == "INVALID_BATCH"
    assert not EventBatch.objects.exists()
