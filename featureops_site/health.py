"""`/healthz`, `/readyz` and (from metrics.py) `/metrics`: plain WSGI in front of Django, like
OFREP and the events API (featureops_site/wsgi.py).

They are for machines (load balancers, orchestrators, Prometheus), so they skip Django's
middleware: no session or CSRF, no ALLOWED_HOSTS check (a probe addresses the pod by its IP)
and no HTTPS redirect (probes and scrapes speak plain HTTP inside the network). No
authentication on the two probes, and nothing sensitive in them: no host names, addresses or
error messages, only check names, counts, ages and exception classes.

- `/healthz`: the process answers. Touches nothing else.
- `/readyz`: 200 when every check passes, 503 otherwise; the JSON body names each check:
  `database` (SELECT 1), `snapshots` (this process's OFREP snapshot store has loaded:
  evaluations can be served), `workers` (every queue of featureops_site.queues has a worker
  seen within WORKER_STALE_SECONDS). `?exclude=workers` (repeatable, or comma-separated) skips
  checks, as Kubernetes' own /readyz does: a load balancer's readiness probe for the evaluation
  pool should not take every web process out of rotation because a Celery worker died.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.db import DatabaseError, connection

from featureops_site import selectors
from flags.snapshot_store import get_store

logger = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Check = dict[str, Any]  # {"ok": bool, "detail": str, ...}

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
_STATUS = {200: "200 OK", 400: "400 Bad Request", 405: "405 Method Not Allowed", 503: "503 Service Unavailable"}
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _json(environ: dict[str, Any], start_response: StartResponse, status: int, payload: dict[str, Any],
          headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = _dumps(payload).encode()
    start_response(_STATUS[status], [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                     ("Cache-Control", "no-store"), *(headers or [])])
    return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def _close_quietly() -> None:
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - a broken connection may not close cleanly; the next use reconnects
        logger.debug("closing the database connection failed", exc_info=True)


# --- checks ------------------------------------------------------------------------------------


def check_database() -> Check:
    """SELECT 1; once more on a fresh connection if the kept one broke (the database restarted)."""
    for attempt in (1, 2):
        try:
            started = time.perf_counter()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
            return {"ok": True, "detail": f"answered in {(time.perf_counter() - started) * 1000:.0f} ms"}
        except DatabaseError as exc:
            _close_quietly()
            if attempt == 2:
                logger.warning("readiness: database unreachable: %s: %s", type(exc).__name__, exc)
                return {"ok": False, "detail": f"unreachable ({type(exc).__name__})"}
    raise AssertionError("unreachable")


def check_snapshots() -> Check:
    """This process's snapshot store has loaded (loading it now if nothing has asked yet: the
    same one-time load the first evaluation would do). It keeps serving the last good
    snapshots when the database goes away; how fresh they are is /metrics' business."""
    store = get_store()
    loaded = store.freshness()
    if not store.last_success:
        error = store.last_error.split(":", 1)[0] or "not loaded yet"
        return {"ok": False, "detail": f"no snapshot loaded ({error})"}
    detail = f"{len(loaded)} environment{'s' if len(loaded) != 1 else ''} loaded"
    if store.last_error:
        detail += f"; serving the last good snapshots, refresh failing ({store.last_error.split(':', 1)[0]})"
    return {"ok": True, "detail": detail, "environments": len(loaded)}


def check_workers() -> Check:
    """Every queue has a worker whose heartbeat is at most WORKER_STALE_SECONDS old."""
    queues: dict[str, dict[str, Any]] = {}
    for queue in selectors.queue_statuses(selectors.worker_statuses()):
        last = min((worker.seconds_since_seen for worker in queue.workers), default=None)
        queues[queue.name] = {"ok": bool(queue.live_workers), "live_workers": len(queue.live_workers),
                              "last_seen_seconds_ago": None if last is None else round(last)}
    missing = [name for name, state in queues.items() if not state["ok"]]
    stale = settings.WORKER_STALE_SECONDS
    detail = (f"no worker seen in the last {stale} s for: {', '.join(missing)}" if missing
              else f"every queue has a worker seen in the last {stale} s")
    return {"ok": not missing, "detail": detail, "queues": queues}


CHECKS: dict[str, Callable[[], Check]] = {
    "database": check_database,
    "snapshots": check_snapshots,
    "workers": check_workers,
}


def _excluded(environ: dict[str, Any]) -> set[str]:
    values = parse_qs(environ.get("QUERY_STRING", "")).get("exclude", [])
    return {name.strip() for value in values for name in value.split(",") if name.strip()}


def readiness(excluded: set[str] = frozenset()) -> tuple[bool, dict[str, Check]]:
    checks: dict[str, Check] = {}
    for name, check in CHECKS.items():
        if name in excluded:
            continue
        try:
            checks[name] = check()
        except Exception as exc:  # noqa: BLE001 - a failing check is a failed check, not a 500
            logger.warning("readiness check %s failed", name, exc_info=True)
            _close_quietly()
            checks[name] = {"ok": False, "detail": f"check failed ({type(exc).__name__})"}
    return all(check["ok"] for check in checks.values()), checks


# --- the endpoints -----------------------------------------------------------------------------


def healthz_application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
        return _json(environ, start_response, 405, {"errorDetails": "Use GET."}, [("Allow", "GET, HEAD")])
    return _json(environ, start_response, 200, {"status": "ok"})


def readyz_application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
        return _json(environ, start_response, 405, {"errorDetails": "Use GET."}, [("Allow", "GET, HEAD")])
    excluded = _excluded(environ)
    unknown = excluded - set(CHECKS)
    if unknown:  # a typo must not silently skip nothing (or everything)
        return _json(environ, start_response, 400, {"errorDetails": f"Unknown check: {', '.join(sorted(unknown))}. "
                                                          f"The checks are {', '.join(CHECKS)}."})
    ready, checks = readiness(excluded)
    payload: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
    if excluded:
        payload["excluded"] = sorted(excluded)
    return _json(environ, start_response, 200 if ready else 503, payload)


def with_operability(application: WSGIApp) -> WSGIApp:
    """Serve /healthz, /readyz and /metrics here, everything else from `application`."""
    from featureops_site.metrics import METRICS_PATH, metrics_application

    routes: dict[str, WSGIApp] = {HEALTH_PATH: healthz_application, READY_PATH: readyz_application,
                                  METRICS_PATH: metrics_application}

    def dispatch(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        endpoint = routes.get(environ.get("PATH_INFO", ""))
        if endpoint is None:
            return application(environ, start_response)
        return endpoint(environ, start_response)

    return dispatch
