"""`POST /api/v1/events` through the project's real WSGI application: authentication,
every refusal of a whole batch, per-event validation with partial acceptance, and
idempotent retries (including two deliveries racing on PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from flags import services
from flags.models import SdkKey
from flags.snapshot_store import get_store
from telemetry.models import Event, EventBatch
from tests.concurrency import run_together
from tests.ofrep_client import call
from tests.telemetry.conftest import ACTOR, PROFILE, TOOL_MODE, ago, environment_id, exposure, flag_id, outcome

pytestmark = pytest.mark.django_db
Post = Callable[..., Any]


# --- accepted ------------------------------------------------------------------------------


def test_valid_batch__exposures_and_outcomes__stored_with_ids(post: Post) -> None:
    # Given an exposure served by its fallback after a timeout, and two outcomes
    events = [exposure("acct-1", "citation_first_v4", served="baseline_v3"),
              outcome("acct-1", "latency_p95", 812.5),
              outcome("acct-1", "resolved_without_escalation", 1, flag=PROFILE, variant="citation_first_v4")]
    # When they are posted
    response = post(events)
    # Then all are accepted and stored with the flag and metric ids, assigned and served both kept
    assert response.status == 200 and response.json() == {"accepted": 3, "rejected": []}
    stored = {e.kind + ":" + (e.variant or "-"): e for e in Event.objects.all()}
    assert stored["exposure:citation_first_v4"].served == "baseline_v3"
    assert stored["exposure:citation_first_v4"].flag_id == flag_id()
    assert stored["exposure:citation_first_v4"].environment_id == environment_id()
    assert stored["outcome:-"].value == 812.5 and stored["outcome:-"].flag_id is None
    assert stored["outcome:citation_first_v4"].flag_id == flag_id()


def test_x_api_key_header__accepted(post: Post, keys: dict[str, str]) -> None:
    response = post([exposure("acct-1")], headers={"X-API-Key": keys["development"]})
    assert response.status == 200 and response.json()["accepted"] == 1
    assert Event.objects.get().environment_id == environment_id("development")


# --- authentication ------------------------------------------------------------------------


def test_auth__missing_or_unknown_key__401_nothing_stored(post: Post) -> None:
    assert post([exposure("a")], headers={}).status == 401
    response = post([exposure("a")], headers={"Authorization": "Bearer fo_srv_not-a-real-key"})
    assert response.status == 401 and response.json()["errorCode"] == "UNAUTHORIZED"
    assert "WWW-Authenticate" in response.headers
    assert not Event.objects.exists() and not EventBatch.objects.exists()


def test_auth__revoked_key__403_other_environment_still_accepted(post: Post, keys: dict[str, str]) -> None:
    # Given a production key that has just been revoked (and the poll that notices it)
    services.sdk_key_revoke(sdk_key=SdkKey.objects.get(environment__key="production"), actor=ACTOR)
    get_store().refresh()
    # When both keys post
    revoked = post([exposure("a")], key=keys["production"])
    other = post([exposure("a")], key=keys["development"])
    # Then the revoked one is refused and stores nothing
    assert revoked.status == 403 and revoked.json()["errorCode"] == "FORBIDDEN"
    assert other.status == 200
    assert Event.objects.count() == 1


# --- the batch as a whole refused ----------------------------------------------------------


@pytest.mark.parametrize("body,status,code", [
    ("{not json", 400, "INVALID_JSON"),
    (b"\xff\xfe", 400, "INVALID_JSON"),
    ('{"batch_id": "b", "events": [{"kind": "outcome", "value": NaN}]}', 400, "INVALID_JSON"),
    ("[1, 2]", 400, "INVALID_BATCH"),
    ("", 400, "INVALID_JSON"),
    ('{"batch_id": "b"}', 400, "INVALID_BATCH"),
    ('{"batch_id": "b", "events": {}}', 400, "INVALID_BATCH"),
    ('{"batch_id": "b", "events": []}', 400, "INVALID_BATCH"),
    ('{"batch_id": "b", "events": [], "extra": 1}', 400, "INVALID_BATCH"),
    ('{"events": [{}]}', 400, "INVALID_BATCH_ID"),
    ('{"batch_id": 7, "events": [{}]}', 400, "INVALID_BATCH_ID"),
    ('{"batch_id": "  ", "events": [{}]}', 400, "INVALID_BATCH_ID"),
    (json.dumps({"batch_id": "x" * 101, "events": [{}]}), 400, "INVALID_BATCH_ID"),
    (json.dumps({"batch_id": "b", "events": [{}] * 1001}), 413, "TOO_MANY_EVENTS"),
])
def test_bad_batch__refused_whole_with_code__nothing_stored(post: Post, body: str, status: int, code: str) -> None:
    response = post(None, body=body)
    assert (response.status, response.json()["errorCode"]) == (status, code)
    assert response.json()["errorDetails"]
    assert not Event.objects.exists() and not EventBatch.objects.exists()


def test_body_over_limit__413(post: Post) -> None:
    # Given a body of just over 1 MiB
    body = json.dumps({"batch_id": "big", "events": [exposure("u" * 200)] * 1000, "pad": "x" * (1024 * 1024)})
    # When it is posted
    response = post(None, body=body)
    # Then it is refused by its size, before being parsed
    assert response.status == 413 and response.json()["errorCode"] == "BODY_TOO_LARGE"
    assert not Event.objects.exists()


def test_invalid_content_length__400(keys: dict[str, str]) -> None:
    response = call("POST", "/api/v1/events", body="{}", content_length="lots",
                    headers={"Authorization": f"Bearer {keys['production']}"})
    assert response.status == 400 and response.json()["errorCode"] == "INVALID_CONTENT_LENGTH"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method__405_with_allow(keys: dict[str, str], method: str) -> None:
    response = call(method, "/api/v1/events", headers={"X-API-Key": keys["production"]})
    assert response.status == 405 and response.headers["Allow"] == "POST"


def test_other_api_paths__still_django(db: None) -> None:
    # Django's management API answers them (a problem for a path it does not know), not the events app
    response = call("GET", "/api/v1/eventsx")
    assert response.status == 404
    assert response.headers.get("Content-Type", "") == "application/problem+json"
    assert json.loads(response.body)["type"] == "urn:featureops:problem:not_found"


# --- per-event validation ------------------------------------------------------------------


BAD_EVENTS: list[tuple[Any, str]] = [
    ("not an object", "event"),
    ({"kind": "click", "unit": "u"}, "kind"),
    ({**exposure("u"), "flag": "no_such_flag"}, "flag"),
    ({**exposure("u"), "variant": "write"}, "variant"),  # a variation of another flag
    ({**exposure("u"), "served": None}, "served"),
    ({**exposure("u"), "unit": 42}, "unit"),
    ({**exposure("u"), "unit": ""}, "unit"),
    ({**exposure("u"), "unit": "u" * 201}, "unit"),
    ({**exposure("u"), "extra": 1}, "extra"),
    ({k: v for k, v in exposure("u").items() if k != "flag"}, "flag"),
    ({k: v for k, v in exposure("u").items() if k != "time"}, "time"),
    ({**exposure("u"), "time": "yesterday"}, "time"),
    ({**exposure("u"), "time": "2026-11-21T10:00:00"}, "time"),  # no time zone
    ({**exposure("u"), "time": 1700000000}, "time"),
    ({**exposure("u"), "time": ago(days=8)}, "time"),
    ({**exposure("u"), "time": ago(days=-1)}, "time"),  # (a day ahead: still ahead when the suite reaches it)
    (outcome("u", "no_such_metric", 1), "metric"),
    (outcome("u", "latency_p95", "fast"), "value"),
    (outcome("u", "latency_p95", True), "value"),
    (outcome("u", "latency_p95", 10**400), "value"),
    ({k: v for k, v in outcome("u", "latency_p95", 1).items() if k != "value"}, "value"),
    (outcome("u", "latency_p95", 1, variant="baseline_v3"), "variant"),  # a variant without its flag
    (outcome("u", "latency_p95", 1, flag="no_such_flag"), "flag"),
    ({**outcome("u", "latency_p95", 1), "served": "x"}, "served"),
]


@pytest.mark.parametrize("bad,field", BAD_EVENTS)
def test_bad_event__rejected_by_index_and_field__valid_neighbours_stored(post: Post, bad: Any, field: str) -> None:
    # Given a bad event between two good ones
    events = [exposure("acct-1"), bad, outcome("acct-1", "latency_p95", 300)]
    # When the batch is posted
    response = post(events)
    # Then the bad one is named by index and field, and only the good ones are stored
    assert response.status == 200
    body = response.json()
    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1]
    assert field in body["rejected"][0]["errors"] and body["rejected"][0]["errors"][field]
    assert Event.objects.count() == 2


def test_all_events_rejected__200_accepted_zero__retry_answers_same(post: Post) -> None:
    first = post([{"kind": "exposure"}, outcome("u", "nope", 1)], batch_id="all-bad")
    assert first.status == 200 and first.json()["accepted"] == 0 and len(first.json()["rejected"]) == 2
    assert post([exposure("u")], batch_id="all-bad").json() == first.json()
    assert not Event.objects.exists()


def test_metric_created_after_first_batch__accepted_on_next_batch(post: Post) -> None:
    from flags.models import Project
    from telemetry.services import metric_create

    assert post([outcome("u", "tokens_used", 10)]).json()["accepted"] == 0
    metric_create(project=Project.objects.get(key="support-assistant"), key="tokens_used", name="Tokens",
                  kind="mean", higher_is_better=False, actor=ACTOR)
    from telemetry import ingest
    ingest.metric_ids.miss_seconds = 0  # (the cache reloads on a miss at most once a second)
    try:
        assert post([outcome("u", "tokens_used", 10)]).json()["accepted"] == 1
    finally:
        ingest.metric_ids.miss_seconds = 1.0


# --- idempotency ---------------------------------------------------------------------------


def test_retry__same_batch_id__original_counts_stored_once(post: Post, keys: dict[str, str]) -> None:
    # Given a batch with one bad event, delivered once
    events = [exposure("acct-1"), {"kind": "exposure"}, exposure("acct-2")]
    first = post(events, batch_id="batch-1")
    # When the application retries it (even with different content), and posts it to another environment
    retry = post(events[:1], batch_id="batch-1")
    elsewhere = post(events, batch_id="batch-1", key=keys["development"])
    # Then the retry answers the first counts and stores nothing; the other environment is its own
    assert first.json()["accepted"] == 2 and retry.json() == first.json()
    assert retry.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in first.headers
    assert elsewhere.json()["accepted"] == 2
    assert Event.objects.filter(environment_id=environment_id()).count() == 2
    assert EventBatch.objects.count() == 2


@pytest.mark.postgres  # SQLite's parameter limit splits a multi-row INSERT; PostgreSQL takes one COPY
def test_queries__fixed_per_batch__whatever_its_size(post: Post) -> None:
    post([exposure("warm-up")])  # the metric cache and the snapshot load once per process
    counts = []
    for size in (10, 500):
        with CaptureQueriesContext(connection) as captured:
            assert post([exposure(f"u{n}") for n in range(size)]).json()["accepted"] == size
        counts.append(len(captured))
    assert counts[0] == counts[1] <= 6


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_retry_race__same_batch_twice_at_once__stored_once_both_answer_same(keys: dict[str, str]) -> None:
    # Given one batch of 200 events
    batch_id = uuid.uuid4().hex
    body = {"batch_id": batch_id, "events": [exposure(f"acct-{n}") for n in range(200)] + [{"kind": "x"}]}

    def deliver() -> tuple[int, Any]:
        response = call("POST", "/api/v1/events", body=body, headers={"Authorization": f"Bearer {keys['production']}"})
        return response.status, response.json()

    # When four deliveries of it arrive at the same moment
    answers, errors = run_together(deliver, deliver, deliver, deliver)
    # Then every one answers the same counts, and the events are stored once
    assert len(answers) == 4, errors
    assert {(status, json.dumps(body, sort_keys=True)) for status, body in answers} == {
        (200, json.dumps({"accepted": 200, "rejected": [{"index": 200, "errors": {"kind": 'Must be "exposure" or "outcome".'}}]},
                         sort_keys=True))}
    assert Event.objects.count() == 200 and EventBatch.objects.filter(batch_id=batch_id).count() == 1


def test_tool_mode_flag__its_own_variations_accepted(post: Post) -> None:
    response = post([exposure("acct-1", "approval_required", served="read_only", flag=TOOL_MODE)])
    assert response.json() == {"accepted": 1, "rejected": []}
