"""OFREP event streams (flags/ofrep_streams.py) served by uvicorn (featureops_site/asgi.py) on the
test database, as a provider uses them: the bulk answer names the stream, the stream carries
`refetchEvaluation` events for committed changes, replays missed ones, sends heartbeats and
closes when its key is revoked. And the bulk endpoint's `flagConfigEtag` /
`flagConfigLastModified` hints, which make a process that has not yet heard of a change rebuild
before it answers (flags/ofrep.py, `_newer_than`)."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pytest
from django.db import transaction

from featureops_site.wsgi import application as wsgi_application
from flags import change_feed, services
from flags.models import Environment, Project, Targeting
from flags.ofrep_streams import stream_token
from flags.sdk_auth import hash_sdk_key
from flags.snapshot_store import SnapshotStore, reset_store
from tests import servers
from tests.factories import TEST_ACTOR
from tests.flags.support import INCIDENT
from tests.ofrep_client import WsgiResponse
from tests.servers import database_url_from_settings

SERVER_SECRET = "uvicorn-test-secret-key-xx"


# -- the server and a small SSE client ------------------------------------------------------------


@contextlib.contextmanager
def uvicorn(database_url: str, **extra_env: str) -> Iterator[str]:
    """tests.servers.uvicorn with the secret the tests sign stream tokens with."""
    with servers.uvicorn(database_url, env={"SECRET_KEY": SERVER_SECRET, **extra_env}) as base:
        yield base


class EventStream:
    """One GET of a stream URL; `block()` reads one SSE block (the lines up to a blank line)."""

    def __init__(self, base: str, uri: str, headers: dict[str, str] | None = None) -> None:
        url = urlparse(base)
        self.connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
        self.connection.request("GET", uri, headers=headers or {})
        self.response = self.connection.getresponse()
        self.status = self.response.status

    def block(self, timeout: float) -> list[str] | None:
        """The next block's lines; None when the server ended the stream. Raises TimeoutError."""
        assert self.connection.sock is not None
        self.connection.sock.settimeout(timeout)
        lines: list[str] = []
        while True:
            line = self.response.readline()
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text == "":
                if lines:
                    return lines
                continue
            lines.append(text)

    def event(self, timeout: float) -> dict[str, Any]:
        """The next event (skipping comments): {"id": ..., "event": ..., "data": {...}}."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            lines = self.block(left)
            if lines is None:
                raise EOFError("the stream ended")
            fields = dict(line.split(": ", 1) for line in lines if not line.startswith(":"))
            if "id" in fields:
                return {"id": fields["id"], "event": fields.get("event"), "data": json.loads(fields["data"])}
        raise TimeoutError(f"no event within {timeout} s")

    def close(self) -> None:
        self.connection.close()


def bulk(base: str, sdk_key: str) -> tuple[int, dict[str, Any]]:
    url = urlparse(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request("POST", "/ofrep/v1/evaluate/flags", body=b"{}",
                           headers={"Authorization": f"Bearer {sdk_key}", "Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@dataclass
class StreamWorld:
    base: str
    project: Project
    development: Environment
    production: Environment
    development_key: str
    production_key: str

    def stream_uri(self, sdk_key: str | None = None) -> str:
        status, body = bulk(self.base, sdk_key or self.development_key)
        assert status == 200, body
        return body["eventStreams"][0]["endpoint"]["requestUri"]

    def open(self, sdk_key: str | None = None, headers: dict[str, str] | None = None) -> EventStream:
        stream = EventStream(self.base, self.stream_uri(sdk_key), headers)
        assert stream.status == 200
        return stream


@pytest.fixture
def world(transactional_db: None) -> Iterator[StreamWorld]:
    """The demo on a committed database, an SDK key for development and one for production, and
    uvicorn serving it (heartbeats every half second)."""
    from flags.demo import seed_demo

    project, _ = seed_demo()
    development = Environment.objects.get(project=project, key="development")
    production = Environment.objects.get(project=project, key="production")
    development_key = services.sdk_key_create(environment=development, name="dev", actor=TEST_ACTOR)[1]
    production_key = services.sdk_key_create(environment=production, name="prod", actor=TEST_ACTOR)[1]
    with uvicorn(database_url_from_settings(), OFREP_STREAM_HEARTBEAT_SECONDS="0.5") as base:
        yield StreamWorld(base, project, development, production, development_key, production_key)


def bump(environment: Environment) -> tuple[str, int]:
    """Commit a version bump; the event id and lastModified it must produce."""
    with transaction.atomic():
        change_feed.bump_environments(ids=[environment.pk])
    environment.refresh_from_db()
    return f"{environment.pk}-{environment.version}", int(environment.changed_at.timestamp())


pytestmark = pytest.mark.postgres


# -- streams ------------------------------------------------------------------------------------------


def test_bulk_answer__event_stream_url__opens_a_text_event_stream(world: StreamWorld) -> None:
    # Given the bulk answer's eventStreams
    status, body = bulk(world.base, world.development_key)
    assert status == 200
    streams = body["eventStreams"]
    assert [stream["type"] for stream in streams] == ["sse"]
    assert world.development_key not in json.dumps(streams)  # the URL carries a token, never the key
    # When its URL is opened
    stream = EventStream(world.base, streams[0]["endpoint"]["requestUri"])
    try:
        # Then it is an event stream that starts with a retry interval
        assert stream.status == 200
        assert stream.response.getheader("Content-Type", "").startswith("text/event-stream")
        assert stream.response.getheader("Cache-Control") == "no-store"
        assert stream.block(timeout=2) == ["retry: 2000", ": featureops event stream"]
    finally:
        stream.close()


def test_committed_change__open_stream__gets_refetch_event_within_a_second(world: StreamWorld) -> None:
    # Given an open stream of development
    stream = world.open()
    try:
        stream.block(timeout=2)  # the opening
        # When a targeting change commits through the service
        targeting = Targeting.objects.get(flag__project=world.project, flag__key=INCIDENT,
                                          environment=world.development)
        services.targeting_update(targeting=targeting, actor=TEST_ACTOR, default_serve={"variation": "cached_answer"})
        committed = time.monotonic()
        world.development.refresh_from_db()
        # Then the event arrives within a second, naming the new version
        event = stream.event(timeout=1.0)
        assert time.monotonic() - committed < 1.0
        version = world.development.version
        assert event == {"id": f"{world.development.pk}-{version}", "event": "message", "data": {
            "type": "refetchEvaluation", "etag": f'"e{world.development.pk}-v{version}"',
            "lastModified": int(world.development.changed_at.timestamp())}}
        # and a bare version bump too
        expected_id, last_modified = bump(world.development)
        event = stream.event(timeout=1.0)
        assert (event["id"], event["data"]["lastModified"]) == (expected_id, last_modified)
    finally:
        stream.close()


def test_change_in_another_environment__stream__stays_quiet(world: StreamWorld) -> None:
    stream = world.open()
    try:
        stream.block(timeout=2)
        bump(world.production)
        expected_id, _ = bump(world.development)
        # the first event seen is development's, not production's
        assert stream.event(timeout=1.0)["id"] == expected_id
    finally:
        stream.close()


@pytest.mark.parametrize("query", ["", "?token=", "?token=garbage", "?token=1.2.3.4", "?token=%00%ff"])
def test_bad_token__stream__401(world: StreamWorld, query: str) -> None:
    stream = EventStream(world.base, "/ofrep/v1/streams" + query)
    assert stream.status == 401
    assert "stream token" in json.loads(stream.response.read())["errorDetails"]


def test_tampered_token__stream__401(world: StreamWorld) -> None:
    # Given a real token whose environment is changed to another one
    uri = world.stream_uri()
    prefix, token = uri.split("token=")
    _environment, rest = token.split(".", 1)
    tampered = f"{prefix}token={world.production.pk}.{rest}"
    # When it is used, then it is refused
    assert EventStream(world.base, tampered).status == 401
    # (and the untouched token still works: the refusal is the tampering's)
    assert EventStream(world.base, uri).status == 200


def test_token_of_another_environments_key__stream__401(world: StreamWorld, settings: Any) -> None:
    # Given a correctly signed token for development made from production's key
    settings.SECRET_KEY = SERVER_SECRET
    token = stream_token(world.development.pk, hash_sdk_key(world.production_key))
    # When it is used, then the key is unknown for that environment
    stream = EventStream(world.base, f"/ofrep/v1/streams?token={token}")
    assert stream.status == 401
    assert json.loads(stream.response.read())["errorDetails"] == "Unknown SDK key."


def test_revoked_key__open_stream_closed_and_reconnect__403(world: StreamWorld) -> None:
    # Given an open stream of a key, and another key's stream of the same environment
    doomed_row, doomed_key = services.sdk_key_create(environment=world.development, name="doomed", actor=TEST_ACTOR)
    uri = world.stream_uri(doomed_key)
    doomed = EventStream(world.base, uri)
    other = world.open()
    try:
        assert doomed.status == 200
        doomed.block(timeout=2)
        other.block(timeout=2)
        # When the key is revoked
        services.sdk_key_revoke(sdk_key=doomed_row, actor=TEST_ACTOR, reason="leaked")
        # Then its stream ends (after at most the change's own event), and the other key's does not
        ended = False
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if doomed.block(timeout=deadline - time.monotonic()) is None:
                ended = True
                break
        assert ended, "the revoked key's stream is still open"
        assert other.event(timeout=1.0)["id"] == f"{world.development.pk}-{Environment.objects.get(pk=world.development.pk).version}"
        # and connecting again is refused
        again = EventStream(world.base, uri)
        assert again.status == 403
        assert json.loads(again.response.read())["errorDetails"] == "This SDK key has been revoked."
    finally:
        doomed.close()
        other.close()


def test_last_event_id__older_version__missed_events_replayed_at_connect(world: StreamWorld) -> None:
    # Given a provider that saw version v0, and two changes it missed (the server heard them)
    world.development.refresh_from_db()
    seen = f"{world.development.pk}-{world.development.version}"
    witness = world.open()
    try:
        witness.block(timeout=2)
        first, _ = bump(world.development)
        second, _ = bump(world.development)
        assert [witness.event(timeout=1.0)["id"] for _ in range(2)] == [first, second]
    finally:
        witness.close()
    # When it reconnects with Last-Event-ID v0
    stream = world.open(headers={"Last-Event-ID": seen})
    try:
        opening = stream.block(timeout=2)
        assert opening is not None and opening[0] == "retry: 2000"
        # Then both missed events come at once, oldest first
        assert [stream.event(timeout=0.3)["id"] for _ in range(2)] == [first, second]
    finally:
        stream.close()
    # and one that is up to date gets no replay (only heartbeats until the next change)
    current = world.open(headers={"Last-Event-ID": second})
    try:
        current.block(timeout=2)
        with pytest.raises(TimeoutError):
            current.event(timeout=1.2)
    finally:
        current.close()


def test_open_stream__idle__heartbeats_arrive(world: StreamWorld) -> None:
    stream = world.open()
    try:
        stream.block(timeout=2)
        started = time.monotonic()
        beats = [stream.block(timeout=2) for _ in range(2)]
        # OFREP_STREAM_HEARTBEAT_SECONDS=0.5: two comments within about a second
        assert beats == [[": heartbeat"], [": heartbeat"]]
        assert time.monotonic() - started < 1.8
    finally:
        stream.close()


# -- the bulk endpoint's hints (in-process, a store that does not poll) ---------------------------------


def bulk_in_process(sdk_key: str, query: str = "") -> WsgiResponse:
    """POST the bulk endpoint through the real WSGI app with a query string (which
    tests/ofrep_client.call does not set)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/ofrep/v1/evaluate/flags", "QUERY_STRING": query,
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(b"{}"), "wsgi.errors": io.StringIO(), "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": "2", "HTTP_AUTHORIZATION": f"Bearer {sdk_key}"}
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        captured["status"], captured["headers"] = int(status.split()[0]), dict(headers)

    body = b"".join(wsgi_application(environ, start_response))
    return WsgiResponse(captured["status"], captured["headers"], body)


def served_variant(response: WsgiResponse, flag_key: str) -> str:
    assert response.status == 200, response.body
    return next(flag["variant"] for flag in response.json()["flags"] if flag["key"] == flag_key)


@pytest.fixture
def stale_process(demo: Project, fresh_caches: None) -> Iterator[tuple[str, Environment]]:
    """A process whose store loaded development and then does not poll: a change committed
    afterwards is unknown to it until something makes it rebuild."""
    development = Environment.objects.get(project=demo, key="development")
    key = services.sdk_key_create(environment=development, name="dev", actor=TEST_ACTOR)[1]
    reset_store(SnapshotStore(poll_seconds=0))
    assert served_variant(bulk_in_process(key), INCIDENT) == "baseline_model"
    targeting = Targeting.objects.get(flag__project=demo, flag__key=INCIDENT, environment=development)
    services.targeting_update(targeting=targeting, actor=TEST_ACTOR, default_serve={"variation": "human_escalation"})
    development.refresh_from_db()
    # (the store really is stale: without a hint it still answers the old variant)
    assert served_variant(bulk_in_process(key), INCIDENT) == "baseline_model"
    yield key, development


@pytest.mark.django_db
def test_bulk__flag_config_etag_of_newer_version__answers_the_new_flags(
        stale_process: tuple[str, Environment]) -> None:
    key, development = stale_process
    etag = f'"e{development.pk}-v{development.version}"'
    response = bulk_in_process(key, f"flagConfigEtag={etag}")
    assert served_variant(response, INCIDENT) == "human_escalation"
    # and the process now serves it to everyone
    assert served_variant(bulk_in_process(key), INCIDENT) == "human_escalation"


@pytest.mark.django_db
def test_bulk__flag_config_last_modified_later__answers_the_new_flags(
        stale_process: tuple[str, Environment]) -> None:
    key, development = stale_process
    response = bulk_in_process(key, f"flagConfigLastModified={int(development.changed_at.timestamp()) + 1}")
    assert served_variant(response, INCIDENT) == "human_escalation"


@pytest.mark.django_db
@pytest.mark.parametrize("query", [
    "flagConfigEtag=garbage", "flagConfigEtag=%22e1-vX%22", "flagConfigEtag=%22e999999-v99999%22",
    "flagConfigEtag=", "flagConfigEtag=%22e-v%22", "flagConfigLastModified=yesterday",
    "flagConfigLastModified=-5", "flagConfigLastModified=1e12", "flagConfigLastModified=",
    "flagConfigEtag=%ff%fe&flagConfigLastModified=%00",
    "flagConfigLastModified=%C2%B9",  # "¹": a digit to str.isdigit, not to int() (schemathesis found it)
])
def test_bulk__invalid_config_hints__ignored_with_200(stale_process: tuple[str, Environment], query: str) -> None:
    key, _development = stale_process
    # an unusable hint neither fails the request nor makes the process rebuild
    assert served_variant(bulk_in_process(key, query), INCIDENT) == "baseline_model"


@pytest.mark.django_db
def test_bulk__flag_config_etag_of_current_version__no_rebuild(stale_process: tuple[str, Environment]) -> None:
    key, development = stale_process
    # the etag the stale process already has (one version behind the database) names nothing newer
    etag = f'"e{development.pk}-v{development.version - 1}"'
    assert served_variant(bulk_in_process(key, f"flagConfigEtag={etag}"), INCIDENT) == "baseline_model"
