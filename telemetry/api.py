"""`POST /api/v1/events`: exposure and outcome events from applications.

A plain WSGI app in front of Django, like OFREP (`flags/ofrep.py`): the SDK key resolves in
memory through the snapshot store's key index, flag keys through the environment's compiled
snapshot, and the only database work is storing the batch. It wraps the OFREP dispatcher
(`featureops_site/wsgi.py`) rather than extending it, so `flags` never imports telemetry.

Body: `{"batch_id": "<idempotency key>", "events": [...]}`, at most 1,000 events and
TELEMETRY_MAX_BODY_BYTES (1 MiB). Answers:
- 200 `{"accepted": n, "rejected": [{"index": i, "errors": {field: message}}]}`: valid events
  are stored, invalid ones are not (by field: NUL bytes and lone surrogates in strings, times
  out of range in UTC included). A repeated batch_id for the environment answers the first
  delivery's counts, stores nothing, and says `Idempotent-Replayed: true`.
- 400 INVALID_JSON / INVALID_BATCH / INVALID_BATCH_ID (NUL or lone surrogate included) /
  INVALID_CONTENT_LENGTH; 401 a missing or unknown key; 403 a revoked key; 405; 413 BODY_TOO_LARGE / TOO_MANY_EVENTS;
  503 flag data not loaded yet, or the database unreachable (retry: nothing was stored).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from featureops_site.instruments import events_ingested_add
from flags.sdk_auth import SdkKeyRefused, authenticate
from telemetry import ingest
from telemetry.constants import MAX_BODY_BYTES

logger = logging.getLogger(__name__)

EVENTS_PATH = "/api/v1/events"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_STATUS = {200: "200 OK", 400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden",
           404: "404 Not Found", 405: "405 Method Not Allowed", 413: "413 Content Too Large",
           500: "500 Internal Server Error", 503: "503 Service Unavailable"}
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class _Refusal(Exception):
    def __init__(self, status: int, code: str, details: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(details)
        self.status, self.code, self.details, self.headers = status, code, details, headers or []


def _read_body(environ: dict[str, Any]) -> bytes:
    limit = getattr(settings, "TELEMETRY_MAX_BODY_BYTES", MAX_BODY_BYTES)
    declared = environ.get("CONTENT_LENGTH") or ""
    try:
        length = int(declared) if declared else None
    except ValueError as exc:
        raise _Refusal(400, "INVALID_CONTENT_LENGTH", "Invalid Content-Length.") from exc
    if length is not None and (length < 0 or length > limit):
        raise _Refusal(413 if length > limit else 400, "BODY_TOO_LARGE" if length > limit else "INVALID_CONTENT_LENGTH",
                       f"The request body is over {limit} bytes." if length > limit else "Invalid Content-Length.")
    # Without a length (chunked), read one byte past the limit to know whether it is over.
    body = environ["wsgi.input"].read(length if length is not None else limit + 1)
    if len(body) > limit:
        raise _Refusal(413, "BODY_TOO_LARGE", f"The request body is over {limit} bytes.")
    return body


def _post_events(environ: dict[str, Any]) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
    try:
        snapshot = authenticate(environ, realm="events")  # the same rule as OFREP
    except SdkKeyRefused as refused:
        raise _Refusal(refused.status, refused.code, refused.details, refused.headers) from None
    body = _read_body(environ)
    try:
        batch_id, events = ingest.parse_batch(body)
    except ingest.BatchError as error:
        raise _Refusal(error.status, error.code, error.details) from error
    now = timezone.now()
    try:
        rows, rejected = ingest.validate_events(events, snapshot=snapshot, metric_ids=ingest.metric_ids, now=now)
        result = ingest.store_batch(environment_id=snapshot.environment_id, batch_id=batch_id, rows=rows,
                                    rejected=rejected, now=now)
    except DatabaseError as exc:
        logger.warning("events: database unavailable: %s", exc)
        connection.close()  # a fresh connection on the next request
        raise _Refusal(503, "UNAVAILABLE", "Events could not be stored; retry the same batch.",
                       [("Retry-After", "1")]) from exc
    headers = [("Cache-Control", "no-store")]
    if result.replayed:
        headers.append(("Idempotent-Replayed", "true"))
    else:
        events_ingested_add(accepted=result.accepted, rejected=len(result.rejected))  # for /metrics
    return 200, result.body(), headers


def events_application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    method = environ.get("REQUEST_METHOD", "GET")
    headers: list[tuple[str, str]] = []
    try:
        if environ.get("PATH_INFO", "").rstrip("/") != EVENTS_PATH:
            raise _Refusal(404, "NOT_FOUND", "No such endpoint.")
        if method != "POST":
            raise _Refusal(405, "METHOD_NOT_ALLOWED", "Use POST.", [("Allow", "POST")])
        status, payload, headers = _post_events(environ)
    except _Refusal as refusal:
        status, headers = refusal.status, refusal.headers
        payload = {"errorCode": refusal.code, "errorDetails": refusal.details}
    except Exception:  # noqa: BLE001 - an unexpected fault still answers JSON
        logger.exception("events request failed")
        status, payload = 500, {"errorCode": "GENERAL", "errorDetails": "Internal error."}
    body = _dumps(payload).encode()
    start_response(_STATUS.get(status, f"{status} Error"),
                   [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers])
    return [body]


def with_telemetry(application: WSGIApp) -> WSGIApp:
    """Serve /api/v1/events from the lean events app and everything else from `application`."""

    def dispatch(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").rstrip("/") == EVENTS_PATH:
            return events_application(environ, start_response)
        return application(environ, start_response)

    return dispatch
