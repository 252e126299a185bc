"""The live console: one server-sent event stream per open tab (`GET /live/events`, ASGI, served
by uvicorn through featureops_site/asgi.py), so pages update without a reload when something
they show changes: an approval lands on a change request, a plan moves or pauses, the inbox
count moves.

Source: every audit row of a project is announced when its transaction commits
(`audit.services._announce`: PostgreSQL NOTIFY on `featureops_live`, or in-process listeners on
other databases). One listener per server process fans each announcement out to the streams of
people who can see that project, as named events (the payload is only a hint: pages re-fetch
what they show through their own views, which check permissions as always):

- `change` — anything in one of the person's projects;
- `<model>` and `<model>-<id>` — the row the change was about, e.g. `rolloutplan` / `rolloutplan-3`;
- `changerequest` and `changerequest-<id>` — when the change belongs to a change request.

Pages subscribe with the htmx SSE extension (`hx-trigger="sse:changerequest-7"`, base.html).
A stream is authenticated once, from the session cookie, and lives LIVE_STREAM_SECONDS (the
browser reconnects and is checked again: a signed-out or removed person stops receiving).
"""

from __future__ import annotations

import asyncio
import json
import logging
from http.cookies import SimpleCookie
from typing import Any

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from audit.services import LIVE_CHANNEL, listen_in_process
from flags.ofrep_streams import listener_params, pump

logger = logging.getLogger(__name__)

LIVE_PATH = "/live/events"


def live_not_served_here(request: HttpRequest) -> HttpResponse:
    """`/live/events` reached Django: this server is not the ASGI one (gunicorn alone, tests'
    live server). 204 tells EventSource to stop trying; pages then simply do not update live."""
    return HttpResponse(status=204)


def topics(target_type: str, target_id: str, change_request_id: int | None) -> list[str]:
    model = target_type.rpartition(".")[2]
    names = ["change", model, f"{model}-{target_id}"]
    if change_request_id and model != "changerequest":
        names += ["changerequest", f"changerequest-{change_request_id}"]
    return names


def render(payload: str) -> tuple[int, bytes] | None:
    """An announcement → (project id, the SSE events to send), or None if it is malformed."""
    try:
        project_id, target_type, target_id, change_request_id = json.loads(payload)
        data = json.dumps({"target": target_type, "id": target_id}, separators=(",", ":"))
        events = "".join(f"event: {name}\ndata: {data}\n\n" for name in topics(str(target_type), str(target_id),
                                                                                change_request_id))
        return int(project_id), events.encode()
    except (ValueError, TypeError):
        return None


class _Hub:
    def __init__(self) -> None:
        self.streams: dict[asyncio.Queue[bytes], frozenset[int]] = {}
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            loop = asyncio.get_running_loop()
            self.task = loop.create_task(self._run(), name="live-console-feed")

    def publish(self, payload: str) -> None:
        rendered = render(payload)
        if rendered is None:
            return
        project_id, events = rendered
        for queue, projects in self.streams.items():
            if project_id in projects:
                queue.put_nowait(events)

    async def _run(self) -> None:
        params = await sync_to_async(listener_params, thread_sensitive=False)()
        if params is None:  # no NOTIFY: this process's own commits (the development server)
            loop = asyncio.get_running_loop()
            listen_in_process(lambda payload: loop.call_soon_threadsafe(self.publish, payload))
            return
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {LIVE_CHANNEL}")
                    async for notification in conn.notifies():
                        self.publish(notification.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - outlive a database restart
                logger.warning("live console feed: %s; retrying", exc)
                await asyncio.sleep(1)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None


def _readable_projects(session_key: str) -> frozenset[int] | None:
    """The projects the session's person can see, or None when the session is not signed in."""
    from importlib import import_module

    from django.contrib.auth import get_user
    from django.db import connection
    from django.http import HttpRequest

    from flags.permissions import visible_projects

    try:
        request = HttpRequest()
        request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
        user = get_user(request)  # checks the session's auth hash, as the console does
        if not user.is_authenticated or not user.is_active:
            return None
        return frozenset(visible_projects(user).values_list("pk", flat=True))
    finally:
        connection.close()


_hub: _Hub | None = None


def hub() -> _Hub:
    global _hub
    if _hub is None:
        _hub = _Hub()
    _hub.start()
    return _hub


async def shutdown() -> None:
    global _hub
    if _hub is not None:
        await _hub.stop()
        _hub = None


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = dict(scope.get("headers") or [])
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get(b"cookie", b"").decode("latin-1"))
    except Exception:  # noqa: BLE001 - a malformed cookie header is no session
        cookie = SimpleCookie()
    morsel = cookie.get(settings.SESSION_COOKIE_NAME)
    projects = await sync_to_async(_readable_projects, thread_sensitive=False)(morsel.value) if morsel else None
    if scope["method"] != "GET" or projects is None:
        status = 405 if scope["method"] != "GET" else 401
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain"), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b"Sign in to receive live updates.\n"})
        return
    state = hub()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    state.streams[queue] = projects
    try:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no")]})
        await send({"type": "http.response.body", "body": b"retry: 3000\n: live console\n\n", "more_body": True})
        await pump(queue, receive, send, heartbeat=settings.OFREP_STREAM_HEARTBEAT_SECONDS,
                   lifetime=settings.LIVE_STREAM_SECONDS)
    finally:
        state.streams.pop(queue, None)
