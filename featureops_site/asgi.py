"""ASGI entry point (uvicorn): the long-lived streams, and everything else through the WSGI app.

    uvicorn featureops_site.asgi:application --host 127.0.0.1 --port 8000

- `/ofrep/v1/streams` — OFREP event streams (`flags/ofrep_streams.py`): async, so one process
  holds thousands of idle connections.
- `/live/events` — the live console's stream (`featureops_site/live.py`).
- anything else — the WSGI application of `featureops_site/wsgi.py` (OFREP, the events API, the
  probes and Django), run in a thread pool by a2wsgi. `make run` serves the whole
  site this way on one port. In production gunicorn keeps serving the WSGI app (its throughput
  is unchanged) and this server takes the stream paths behind the same proxy
  (docs/architecture.md, "Event streams").
"""

from __future__ import annotations

import os
from typing import Any

import django  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "featureops_site.settings")
django.setup()  # before the imports below, which need the apps ready

from a2wsgi import WSGIMiddleware  # noqa: E402

from featureops_site import live  # noqa: E402
from featureops_site.wsgi import application as wsgi_application  # noqa: E402
from flags import ofrep_streams  # noqa: E402

# A pool of threads runs the WSGI app (asgiref's adapter would run every request on one thread).
_wsgi = WSGIMiddleware(wsgi_application, workers=int(os.environ.get("ASGI_WSGI_THREADS", "10")))


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http" and scope["path"].rstrip("/") == ofrep_streams.STREAM_PATH:
        await ofrep_streams.application(scope, receive, send)
    elif scope["type"] == "http" and scope["path"].rstrip("/") == live.LIVE_PATH:
        await live.application(scope, receive, send)
    elif scope["type"] == "http":
        await _wsgi(scope, receive, send)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            ofrep_streams.feed()  # listening before the first stream connects
            live.hub()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await ofrep_streams.shutdown()
            await live.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
