"""ASGI entry point (uvicorn): the long-lived streams, and everything else through the WSGI app.

    uvicorn featureops_site.asgi:application --host 127.0.0.1 --port 8000

- `/ofrep/v1/streams` — OFREP event streams (`flags/ofrep_streams.py`): async, so one process
  holds thousands of idle connections.
- anything else — the WSGI application of `featureops_site/wsgi.py` (OFREP, the events API, the
  probes and Django), run in a thread pool by asgiref's adapter. `make run` serves the whole
  site this way on one port. In production gunicorn keeps serving the WSGI app (its throughput
  is unchanged) and this server takes the stream paths behind the same proxy
  (docs/architecture.md, "Event streams").
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "featureops_site.settings")

from asgiref.wsgi import WsgiToAsgi  # noqa: E402

from featureops_site.wsgi import application as wsgi_application  # noqa: E402 - sets Django up
from flags import ofrep_streams  # noqa: E402

_wsgi = WsgiToAsgi(wsgi_application)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http" and scope["path"].rstrip("/") == ofrep_streams.STREAM_PATH:
        await ofrep_streams.application(scope, receive, send)
    elif scope["type"] == "http":
        await _wsgi(scope, receive, send)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            ofrep_streams.feed()  # listening before the first stream connects
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await ofrep_streams.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
