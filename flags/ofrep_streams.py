"""OFREP event streams (ADR-0008 of the protocol): server-sent events that tell a provider to
re-fetch its bulk evaluation when its environment changes.

The bulk response (`flags/ofrep.py`) advertises one stream per environment in `eventStreams`.
Its URL carries a *stream token*, never the SDK key: `<environment>.<key fingerprint>.<expiry>.<mac>`,
an HMAC (SECRET_KEY) over the environment, the first 16 hex digits of the key's SHA-256 and an
expiry hour. It grants nothing but change notices for that environment, stays the same for an
hour (so a provider's re-fetch does not change the URL and reconnect it), expires after
OFREP_STREAM_TOKEN_SECONDS, and is refused (and open streams closed) once its key is revoked.

This module is ASGI, served by uvicorn through `featureops_site/asgi.py`: an open stream is a
coroutine waiting on a queue, so one process holds thousands. One `_Feed` per process:
- LISTENs on `change_feed.CHANNEL` (PostgreSQL) and reads versions and key states at start,
  every OFREP_STREAM_SAFETY_POLL_SECONDS and after a reconnect (elsewhere it only polls);
- on a version move, builds one event and puts it in every queue of that environment:
  `id: <environment>-<version>` (stable: the same change has the same id on every server),
  `data: {"type": "refetchEvaluation", "etag": "\"e<environment>-v<version>\"", "lastModified": <unix seconds>}`.
Streams start with `retry:` and a comment, send a comment heartbeat every
OFREP_STREAM_HEARTBEAT_SECONDS, and replay on `Last-Event-ID`: the events kept since that one
(the last 64 per environment), or, if it is older than those, the latest (a re-fetch is a
re-fetch: one event tells the provider all it needs).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import psycopg
from django.conf import settings

from flags import change_feed

logger = logging.getLogger(__name__)

STREAM_PATH = "/ofrep/v1/streams"
REPLAY_KEPT = 64
CLOSE = b""  # put in a queue `pump` reads: the stream ends


# -- tokens (made by flags/ofrep.py, checked here) ----------------------------------------------


def _mac(message: str) -> str:
    key = hashlib.sha256(("ofrep-stream:" + settings.SECRET_KEY).encode()).digest()
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()[:32]


def stream_token(environment_id: int, key_hash: str, now: float | None = None) -> str:
    """The token of an SDK key's stream: the same for an hour, valid for OFREP_STREAM_TOKEN_SECONDS."""
    hour = int((now if now is not None else time.time()) // 3600) * 3600
    expires = hour + 3600 + settings.OFREP_STREAM_TOKEN_SECONDS
    message = f"{environment_id}.{key_hash[:16]}.{expires}"
    return f"{message}.{_mac(message)}"


def read_token(token: str, now: float | None = None) -> tuple[int, str] | None:
    """(environment id, key fingerprint) of a valid, unexpired token; None otherwise."""
    try:
        environment, fingerprint, expires, mac = token.split(".")
        environment_id, expires_at = int(environment), int(expires)
    except ValueError:
        return None
    if not hmac.compare_digest(mac, _mac(f"{environment}.{fingerprint}.{expires}")):
        return None
    if expires_at < (now if now is not None else time.time()):
        return None
    return environment_id, fingerprint


def event_etag(environment_id: int, version: int) -> str:
    """The configuration validator sent as `etag` (and back as `flagConfigEtag`)."""
    return f'"e{environment_id}-v{version}"'


def parse_event_etag(value: str) -> tuple[int, int] | None:
    value = value.strip().removeprefix("W/").strip('"')
    if not value.startswith("e") or "-v" not in value:
        return None
    environment, _, version = value[1:].partition("-v")
    try:
        return int(environment), int(version)
    except ValueError:
        return None


# -- the feed: versions and keys, pushed to every open stream -------------------------------------


class _Feed:
    def __init__(self) -> None:
        self.versions: dict[int, tuple[int, int]] = {}  # environment -> (version, changed_at)
        self.keys: dict[str, tuple[int, bool]] = {}  # key fingerprint -> (environment, revoked)
        self.recent: dict[int, collections.deque[tuple[int, bytes]]] = {}  # environment -> [(version, event)]
        self.streams: dict[int, set[_Stream]] = {}
        self.by_key: dict[str, set[_Stream]] = {}
        # environment -> the future every stream of it awaits: resolved by the next change, a
        # revocation or the heartbeat tick. One shared future, not a queue per stream, so a
        # change costs one wake-up and one write per stream (docs/performance.md, "Event streams").
        self.wakers: dict[int, asyncio.Future[None]] = {}
        self._since: dict[tuple[int, int], bytes] = {}  # (environment, version a stream has) -> what to send it
        self.heartbeat_task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.connection: psycopg.AsyncConnection[Any] | None = None

    def start(self) -> None:
        if self.task is None:
            loop = asyncio.get_running_loop()
            self.task = loop.create_task(self._run(), name="ofrep-stream-feed")
            self.heartbeat_task = loop.create_task(self._beat(), name="ofrep-stream-heartbeat")

    async def stop(self) -> None:
        for task in (self.task, self.heartbeat_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self.task = self.heartbeat_task = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(settings.OFREP_STREAM_HEARTBEAT_SECONDS)
            for env_id in list(self.wakers):
                self.wake(env_id)

    # reading the database

    async def _read_all(self) -> tuple[dict[int, tuple[int, int]], dict[str, tuple[int, bool]]]:
        if self.connection is None:  # no NOTIFY: through the ORM, in a thread
            return await asyncio.to_thread(_read_with_orm)
        rows = await (await self.connection.execute(_VERSIONS_SQL)).fetchall()
        keys = await (await self.connection.execute(_KEYS_SQL)).fetchall()
        return ({env: (version, int(changed)) for env, version, changed in rows},
                {fingerprint: (env, revoked) for fingerprint, env, revoked in keys})

    async def _run(self) -> None:
        params = await asyncio.to_thread(listener_params)
        safety = settings.OFREP_STREAM_SAFETY_POLL_SECONDS
        while True:
            try:
                if params is not None and (self.connection is None or self.connection.closed):
                    self.connection = await psycopg.AsyncConnection.connect(**params, autocommit=True)
                    await self.connection.execute(f"LISTEN {change_feed.CHANNEL}")
                await self._reload()  # at start, after a reconnect, and on every safety tick
                deadline = time.monotonic() + safety
                if self.connection is None:  # no NOTIFY (SQLite, development): polling is all there is
                    await asyncio.sleep(settings.OFREP_SNAPSHOT_POLL_SECONDS or safety)
                    continue
                while (left := deadline - time.monotonic()) > 0:
                    changes = None
                    async for notification in self.connection.notifies(timeout=left, stop_after=1):
                        changes = change_feed.parse(notification.payload)
                    if changes is None:
                        break  # the safety tick
                    # (queries only once the notifies() generator has let go of the connection)
                    await self._reload_keys_if_needed(changes)
                    self._apply_versions({env: (version, changed) for env, version, changed in changes})
            except asyncio.CancelledError:
                if self.connection is not None:
                    await self.connection.close()
                raise
            except Exception as exc:  # noqa: BLE001 - the feed must outlive a database restart
                logger.warning("OFREP stream feed: %s; retrying", exc)
                if self.connection is not None:
                    await self.connection.close()
                    self.connection = None
                await asyncio.sleep(min(safety, 1.0))

    async def _reload(self) -> None:
        versions, keys = await self._read_all()
        self._apply_keys(keys)
        self._apply_versions(versions)
        self.ready.set()

    async def _reload_keys_if_needed(self, changes: list[tuple[int, int, int]]) -> None:
        # A key created or revoked bumps its environment: read the keys again (one small query
        # per change, not per stream) so a revoked key's streams close at once.
        if self.connection is not None and changes:
            rows = await (await self.connection.execute(_KEYS_SQL)).fetchall()
            self._apply_keys({fingerprint: (env, revoked) for fingerprint, env, revoked in rows})

    def _apply_keys(self, keys: dict[str, tuple[int, bool]]) -> None:
        self.keys = keys
        for fingerprint, streams in list(self.by_key.items()):
            entry = keys.get(fingerprint)
            if entry is None or entry[1]:
                for stream in streams:
                    stream.closed = True
                    self.wake(stream.env_id)

    def _apply_versions(self, versions: dict[int, tuple[int, int]]) -> None:
        for env_id, (version, changed_at) in versions.items():
            known = self.versions.get(env_id)
            if known is not None and known[0] >= version:
                continue
            self.versions[env_id] = (version, changed_at)
            if known is None:
                continue  # first sight (start-up): nothing changed for anyone connected
            event = render_event(env_id, version, changed_at)
            self.recent.setdefault(env_id, collections.deque(maxlen=REPLAY_KEPT)).append((version, event))
            self._since.clear()
            self.wake(env_id)

    # streams

    def waker(self, env_id: int) -> asyncio.Future[None]:
        future = self.wakers.get(env_id)
        if future is None or future.done():
            future = self.wakers[env_id] = asyncio.get_running_loop().create_future()
        return future

    def wake(self, env_id: int) -> None:
        future = self.wakers.pop(env_id, None)
        if future is not None and not future.done():
            future.set_result(None)

    def subscribe(self, env_id: int, fingerprint: str) -> _Stream:
        stream = _Stream(env_id, fingerprint)
        self.streams.setdefault(env_id, set()).add(stream)
        self.by_key.setdefault(fingerprint, set()).add(stream)
        return stream

    def unsubscribe(self, stream: _Stream) -> None:
        self.streams.get(stream.env_id, set()).discard(stream)
        self.by_key.get(stream.fingerprint, set()).discard(stream)

    def current_version(self, env_id: int) -> int:
        return self.versions.get(env_id, (0, 0))[0]

    def since(self, env_id: int, version: int) -> bytes:
        """What a stream that has seen `version` is sent now (built once for all such streams)."""
        key = (env_id, version)
        body = self._since.get(key)
        if body is None:
            body = self._since[key] = b"".join(self.missed(env_id, f"{env_id}-{version}"))
        return body

    def missed(self, env_id: int, last_event_id: str | None) -> list[bytes]:
        """Events after `last_event_id` (`<environment>-<version>`), oldest first."""
        if not last_event_id or env_id not in self.versions:
            return []
        try:
            last_env, last_version = (int(part) for part in last_event_id.split("-"))
        except ValueError:
            last_env, last_version = env_id, 0
        current, changed_at = self.versions[env_id]
        if last_env != env_id or last_version >= current:
            return []
        kept = [event for version, event in self.recent.get(env_id, ()) if version > last_version]
        oldest_kept = min((version for version, _ in self.recent.get(env_id, ())), default=current + 1)
        if not kept or oldest_kept > last_version + 1:
            return [render_event(env_id, current, changed_at)]  # beyond what is kept: the latest says it all
        return kept


def render_event(env_id: int, version: int, changed_at: int) -> bytes:
    data = json.dumps({"type": "refetchEvaluation", "etag": event_etag(env_id, version), "lastModified": changed_at},
                      separators=(",", ":"))
    return f"id: {env_id}-{version}\nevent: message\ndata: {data}\n\n".encode()


_VERSIONS_SQL = ("SELECT id, version, COALESCE(floor(extract(epoch FROM changed_at)), 0)::bigint "
                 "FROM flags_environment")
_KEYS_SQL = "SELECT left(key_hash, 16), environment_id, revoked_at IS NOT NULL FROM flags_sdkkey"


def listener_params() -> dict[str, Any] | None:
    """change_feed.listener_params() from a worker thread of an event loop, closing the Django
    connection that reading them opened (the thread is not a request's: nothing else closes it)."""
    from django.db import connection

    try:
        return change_feed.listener_params()
    finally:
        connection.close()


def _read_with_orm() -> tuple[dict[int, tuple[int, int]], dict[str, tuple[int, bool]]]:
    from django.db import connection

    from flags.models import Environment, SdkKey

    try:
        versions = {env: (version, int(changed.timestamp()) if changed else 0)
                    for env, version, changed in Environment.objects.values_list("id", "version", "changed_at")}
        keys = {key_hash[:16]: (env, revoked is not None)
                for key_hash, env, revoked in SdkKey.objects.values_list("key_hash", "environment_id", "revoked_at")}
        return versions, keys
    finally:
        connection.close()


_feed: _Feed | None = None


def feed() -> _Feed:
    global _feed
    if _feed is None:
        _feed = _Feed()
    _feed.start()
    return _feed


async def shutdown() -> None:
    global _feed
    if _feed is not None:
        await _feed.stop()
        _feed = None


# -- the ASGI app -----------------------------------------------------------------------------------


def _cors(headers: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    origin = headers.get(b"origin", b"").decode("latin-1")
    allowed = settings.OFREP_CORS_ALLOWED_ORIGINS
    if not origin or not allowed:
        return []
    if "*" in allowed:
        return [(b"access-control-allow-origin", b"*")]
    if origin in allowed:
        return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
    return []


async def _refuse(send: Any, status: int, details: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"errorDetails": details}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """GET /ofrep/v1/streams?token=…: the event stream of the token's environment."""
    headers = dict(scope.get("headers") or [])
    cors = _cors(headers)
    if scope["method"] == "OPTIONS":
        await send({"type": "http.response.start", "status": 204, "headers": [
            *cors, (b"access-control-allow-methods", b"GET, OPTIONS"),
            (b"access-control-allow-headers", b"Last-Event-ID, Cache-Control")]})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["method"] != "GET":
        await _refuse(send, 405, "Use GET.", [(b"allow", b"GET, OPTIONS"), *cors])
        return
    from urllib.parse import parse_qs

    token = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token") or [""])[0]
    claim = read_token(token)
    if claim is None:
        await _refuse(send, 401, "A valid stream token is required: take the URL from a bulk evaluation.", cors)
        return
    env_id, fingerprint = claim
    state = feed()
    try:
        await asyncio.wait_for(state.ready.wait(), timeout=10)
    except TimeoutError:
        await _refuse(send, 503, "Flag data is not available yet; retry shortly.", [(b"retry-after", b"1"), *cors])
        return
    key = state.keys.get(fingerprint)
    if key is None or key[0] != env_id:
        await _refuse(send, 401, "Unknown SDK key.", cors)
        return
    if key[1]:
        await _refuse(send, 403, "This SDK key has been revoked.", cors)
        return
    stream = state.subscribe(env_id, fingerprint)
    watcher = asyncio.ensure_future(_watch_disconnect(receive, stream))
    try:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"), *cors]})
        last_event_id = headers.get(b"last-event-id", b"").decode("latin-1") or None
        seen = state.current_version(env_id)
        opening = b"retry: 2000\n: featureops event stream\n\n" + b"".join(state.missed(env_id, last_event_id))
        await send({"type": "http.response.body", "body": opening, "more_body": True})
        await _serve(state, stream, seen, send)
    except OSError:
        pass  # the client went away mid-write
    finally:
        watcher.cancel()
        state.unsubscribe(stream)


class _Stream:
    __slots__ = ("env_id", "fingerprint", "closed")

    def __init__(self, env_id: int, fingerprint: str) -> None:
        self.env_id, self.fingerprint, self.closed = env_id, fingerprint, False


async def _serve(state: _Feed, stream: _Stream, seen: int, send: Any) -> None:
    """Until the stream closes: sleep on the environment's shared waker; on waking, send what
    changed since `seen`, or a heartbeat comment when nothing did (the tick woke it)."""
    while True:
        try:
            await state.waker(stream.env_id)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            continue  # another stream's cancellation cancelled the shared future, not this one
        if stream.closed:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        current_version = state.current_version(stream.env_id)
        if current_version > seen:
            body = state.since(stream.env_id, seen)
            seen = current_version
        else:
            body = b": heartbeat\n\n"
        await send({"type": "http.response.body", "body": body, "more_body": True})


async def _watch_disconnect(receive: Any, stream: _Stream) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.closed = True  # noticed at the next wake-up (a change or the heartbeat)


async def pump(queue: asyncio.Queue[bytes], receive: Any, send: Any, *, heartbeat: float,
               lifetime: float | None = None) -> None:
    """Write what arrives in `queue` to an open event stream until the client leaves, the queue
    says CLOSE or `lifetime` seconds pass (the client then reconnects, and is checked again);
    a comment line every `heartbeat` seconds keeps proxies from closing an idle stream."""
    disconnected = asyncio.ensure_future(_wait_disconnect(receive))
    ends = time.monotonic() + lifetime if lifetime else None
    try:
        while not disconnected.done():
            if ends is not None and time.monotonic() >= ends:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            getting = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getting, disconnected}, timeout=heartbeat,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getting not in done:
                getting.cancel()
                if disconnected in done:
                    return
                await send({"type": "http.response.body", "body": b": heartbeat\n\n", "more_body": True})
                continue
            event = getting.result()
            if event == CLOSE:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            while not queue.empty():  # a burst goes out in one write
                more = queue.get_nowait()
                if more == CLOSE:
                    await send({"type": "http.response.body", "body": event, "more_body": False})
                    return
                event += more
            await send({"type": "http.response.body", "body": event, "more_body": True})
    except OSError:
        return
    finally:
        disconnected.cancel()


async def _wait_disconnect(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
