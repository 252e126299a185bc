"""The OFREP API (OpenFeature Remote Evaluation Protocol, `/ofrep/v1/...`).

A plain WSGI application placed in front of Django (`featureops_site/wsgi.py`): evaluation
requests never enter Django's middleware, sessions or ORM. The path is: SDK-key
authentication against the in-process key index → the environment's compiled snapshot →
the engine → JSON. Bodies follow OFREP 0.3, as restated in our words in `flags/ofrep_openapi.yaml`
(the protocol's own file cannot be fetched in CI); tests/flags/test_ofrep_conformance.py holds
real answers to it.

Reasons. OFREP's reason is a closed list (STATIC, TARGETING_MATCH, SPLIT, DISABLED, UNKNOWN);
the engine's own is finer (it says DEFAULT when the default rule served a flag that has targets
or rules). The answer carries OFREP's reason, and the engine's in `metadata.featureopsReason`.

Bodies. JSON as RFC 8259 has it: NaN and ±Infinity (which json.loads accepts by default), and
numbers too large for a float, are PARSE_ERROR. A body without Content-Length is read to its end
when the server marks where it ends (`wsgi.input_terminated`: gunicorn does, for chunked uploads),
within the same OFREP_MAX_BODY_BYTES.

Status codes: 200; 304 (bulk, If-None-Match matches the ETag); 400 with `errorCode`
PARSE_ERROR (also a body nesting over MAX_JSON_DEPTH) / INVALID_CONTEXT (also a targetingKey that is
not a string) / TARGETING_KEY_MISSING (a split reached without its assignment unit) / GENERAL; 404
FLAG_NOT_FOUND; 401 for a missing or unknown key; 403 for a revoked key; 405 for another method; 413 for a body over
OFREP_MAX_BODY_BYTES; 503 when no snapshot could ever be loaded (database down at start).

Each answer is counted by endpoint and status, and timed, in memory (featureops_site/instruments.py,
exposed by /metrics): no I/O on the request path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings

from featureops_site.instruments import ofrep_request_observe
from flags.evaluation.engine import ErrorCode, EvaluationResult, Reason, Snapshot, context_problem, evaluate
from flags.ofrep_streams import STREAM_PATH, parse_event_etag, stream_token
from flags.sdk_auth import SdkKeyRefused, authenticate, hash_sdk_key, raw_sdk_key
from flags.snapshot_store import get_store

logger = logging.getLogger(__name__)

PREFIX = "/ofrep/v1/"
SINGLE_PREFIX = "/ofrep/v1/evaluate/flags/"
BULK_PATH = "/ofrep/v1/evaluate/flags"
CONFIGURATION_PATH = "/ofrep/v1/configuration"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_STATUS = {200: "200 OK", 204: "204 No Content", 304: "304 Not Modified", 400: "400 Bad Request",
           401: "401 Unauthorized", 403: "403 Forbidden", 404: "404 Not Found", 405: "405 Method Not Allowed",
           413: "413 Content Too Large", 500: "500 Internal Server Error", 503: "503 Service Unavailable"}
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


MAX_JSON_DEPTH = 64  # arrays and objects inside one another; far beyond any evaluation context
_JSON_TOKEN = re.compile(rb'\\.|["\[\]{}]', re.DOTALL)  # an escape pair, a quote, a bracket


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON text nests arrays/objects more than `limit` deep (brackets in strings skipped).

    Checked before json.loads, whose recursion would otherwise end in RecursionError for a
    body of a few kilobytes, and so that nothing downstream walks a pathological tree. One
    linear pass: escape pairs are consumed whole, so an escaped quote never ends a string.
    """
    depth, in_string = 0, False
    for match in _JSON_TOKEN.finditer(body):
        token = match.group()
        if token == b'"':
            in_string = not in_string
        elif in_string or token[0] == 0x5C:  # inside a string, or an escape pair
            continue
        elif token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class _Reply(Exception):
    """Raised to answer at once with a status and a JSON body."""

    def __init__(self, status: int, body: dict[str, Any] | None, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or []


# The engine's reason -> OFREP's. DEFAULT (the default rule served one variation of a flag that has
# individual targets or rules) is TARGETING_MATCH: the targeting was evaluated and chose it; STATIC
# is kept for a flag whose answer cannot depend on the context. Any other reason is UNKNOWN.
OFREP_REASONS: dict[str, str] = {
    Reason.STATIC: "STATIC",
    Reason.DEFAULT: "TARGETING_MATCH",
    Reason.TARGETING_MATCH: "TARGETING_MATCH",
    Reason.SPLIT: "SPLIT",
    Reason.DISABLED: "DISABLED",
}
UNKNOWN_REASON = "UNKNOWN"

# Successful results are prebuilt once per snapshot and shared (engine.EvaluationResult), so their
# OFREP bodies are too: built on first use, then one dict lookup per answer. Keyed by the result
# object itself (identity: it defines no __eq__), which also keeps it alive so that an entry never
# answers for another object. Old snapshots' entries go when the cache is emptied at the bound.
_SUCCESS_BODIES_MAX = 20_000
_success_bodies: dict[EvaluationResult, dict[str, Any]] = {}


def _success_body(result: EvaluationResult) -> dict[str, Any]:
    """The OFREP success body of a result (shared: read-only)."""
    body = _success_bodies.get(result)
    if body is None:
        body = {"key": result.flag_key, "value": result.value,
                "reason": OFREP_REASONS.get(result.reason, UNKNOWN_REASON), "variant": result.variant,
                "metadata": {**result.metadata, "featureopsReason": result.reason}}
        if len(_success_bodies) >= _SUCCESS_BODIES_MAX:
            _success_bodies.clear()
        _success_bodies[result] = body
    return body


def _failure_body(result: EvaluationResult) -> dict[str, Any]:
    return {"key": result.flag_key, "errorCode": result.error_code, "errorDetails": result.error_details or ""}


def _cors_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    origin = environ.get("HTTP_ORIGIN")
    allowed = settings.OFREP_CORS_ALLOWED_ORIGINS
    if not origin or not allowed:
        return []
    if "*" in allowed:
        return [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "ETag")]
    if origin in allowed:
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                ("Access-Control-Expose-Headers", "ETag")]
    return []


def _authenticate(environ: dict[str, Any]) -> Snapshot:
    try:
        return authenticate(environ, realm="ofrep")
    except SdkKeyRefused as refused:
        raise _Reply(refused.status, {"errorDetails": refused.details}, refused.headers) from None


class _NotFinite(ValueError):
    """NaN or ±Infinity in a body: JSON (RFC 8259) has no such numbers."""


def _refuse_constant(name: str) -> float:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999 overflows to inf
        raise _NotFinite(text)
    return number


_READ_CHUNK = 16 * 1024


def _read_body(environ: dict[str, Any]) -> bytes:
    """The request body, at most OFREP_MAX_BODY_BYTES (413 beyond)."""
    limit = settings.OFREP_MAX_BODY_BYTES
    stream = environ["wsgi.input"]
    declared = environ.get("CONTENT_LENGTH")
    if declared:
        try:
            length = int(declared)
            if length < 0:
                raise ValueError(declared)
        except ValueError as exc:
            raise _Reply(400, {"errorCode": ErrorCode.PARSE_ERROR, "errorDetails": "Invalid Content-Length."}) from exc
        if length > limit:
            raise _Reply(413, {"errorDetails": f"The request body is over {limit} bytes."})
        return stream.read(length) if length > 0 else b""
    # No length (a chunked upload): PEP 3333 lets an application read to the end only when the
    # server says the stream ends with the body; otherwise there is no body to read.
    if not environ.get("wsgi.input_terminated"):
        return b""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(_READ_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _Reply(413, {"errorDetails": f"The request body is over {limit} bytes."})


def _read_context(environ: dict[str, Any]) -> dict[str, Any]:
    body = _read_body(environ)
    if not body.strip():
        return {}
    if json_too_deep(body):
        raise _Reply(400, {"errorCode": ErrorCode.PARSE_ERROR,
                           "errorDetails": f"The body nests arrays or objects more than {MAX_JSON_DEPTH} deep."})
    try:
        payload = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotFinite as exc:
        raise _Reply(400, {"errorCode": ErrorCode.PARSE_ERROR,
                           "errorDetails": "NaN and Infinity are not JSON numbers (nor is a number this large)."}
                     ) from exc
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _Reply(400, {"errorCode": ErrorCode.PARSE_ERROR, "errorDetails": "The body is not valid JSON."}) from exc
    if not isinstance(payload, dict):
        raise _Reply(400, {"errorCode": ErrorCode.PARSE_ERROR,
                           "errorDetails": "The body must be a JSON object: {\"context\": {...}}."})
    context = payload.get("context", {})
    if context is None:
        context = {}
    problem = context_problem(context)
    if problem:
        raise _Reply(400, {"errorCode": ErrorCode.INVALID_CONTEXT, "errorDetails": problem})
    return context


def _etag_matches(environ: dict[str, Any], etag: str) -> bool:
    header = environ.get("HTTP_IF_NONE_MATCH")
    if not header:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in candidates or etag in candidates


def _evaluate_single(environ: dict[str, Any], flag_key: str) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
    snapshot = _authenticate(environ)
    context = _read_context(environ)
    result = evaluate(snapshot, flag_key, context)
    if result.error_code == ErrorCode.FLAG_NOT_FOUND:
        return 404, _failure_body(result), []
    get_store().record_evaluation(snapshot.environment_id, flag_key)
    if result.is_error:
        return 400, _failure_body(result), []
    return 200, _success_body(result), [("Cache-Control", "no-store")]


def _newer_than(snapshot: Snapshot, environ: dict[str, Any]) -> dict[int, int] | None:
    """What `flagConfigEtag` / `flagConfigLastModified` (sent by a provider re-fetching because an
    event stream said so) know that this process's snapshot does not: {environment: version} to
    rebuild now, or {environment: 0} to re-read versions. None when the snapshot is current or
    the values are not ours (they are hints: a bad one is ignored, never an error)."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    etag = (query.get("flagConfigEtag") or [""])[0]
    parsed = parse_event_etag(etag) if etag else None
    if parsed is not None and parsed[0] == snapshot.environment_id and parsed[1] > snapshot.version:
        return {parsed[0]: parsed[1]}
    modified = (query.get("flagConfigLastModified") or [""])[0]
    if modified.isascii() and modified.isdigit() and int(modified) > int(snapshot.changed_at):
        return {}
    return None


def _event_streams(snapshot: Snapshot, environ: dict[str, Any]) -> list[dict[str, Any]]:
    key_hash = hash_sdk_key(raw_sdk_key(environ) or "")
    where = f"{STREAM_PATH}?token={stream_token(snapshot.environment_id, key_hash)}"
    stream: dict[str, Any] = {"type": "sse", "inactivityDelaySec": settings.OFREP_STREAM_INACTIVITY_SECONDS}
    if settings.OFREP_STREAM_ORIGIN:
        stream["url"] = settings.OFREP_STREAM_ORIGIN + where
    else:
        stream["endpoint"] = {"requestUri": where}  # the provider's own OFREP origin
    return [stream]


def _evaluate_bulk(environ: dict[str, Any]) -> tuple[int, bytes, list[tuple[str, str]]]:
    snapshot = _authenticate(environ)
    newer = _newer_than(snapshot, environ)
    if newer is not None:
        # A stream told the provider about a change this process has not rebuilt yet (its
        # notification is on the way): rebuild now rather than answer with the old flags.
        get_store().poll_once(newer or None)
        snapshot = _authenticate(environ)
    context = _read_context(environ)
    get_store().record_bulk_evaluation(snapshot.environment_id)
    flags = []
    for key in snapshot.flags:
        result = evaluate(snapshot, key, context)
        flags.append(_failure_body(result) if result.is_error else _success_body(result))
    body = _dumps({"flags": flags, "eventStreams": _event_streams(snapshot, environ)}).encode()
    etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
    headers = [("ETag", etag), ("Cache-Control", "no-cache")]
    if _etag_matches(environ, etag):
        return 304, b"", headers
    return 200, body, headers


def _configuration() -> dict[str, Any]:
    poll_ms = max(1000, int(settings.OFREP_SNAPSHOT_POLL_SECONDS * 1000))
    return {
        "name": "FeatureOps Console",
        "capabilities": {
            "cacheInvalidation": {"polling": {"enabled": True, "minPollingIntervalMs": poll_ms}},
            "flagEvaluation": {"supportedTypes": ["boolean", "string", "int", "float", "object"]},
        },
    }


def ofrep_application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    started = time.perf_counter()
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    cors = _cors_headers(environ)
    status, headers = 500, []
    endpoint = "other"  # for /metrics: single, bulk, configuration, other (preflights, unknown paths)
    body: bytes
    try:
        if method == "OPTIONS":
            status, body = 204, b""
            if cors:
                headers = [("Access-Control-Allow-Methods", "POST, GET, OPTIONS"),
                           ("Access-Control-Allow-Headers", "Authorization, X-API-Key, Content-Type, If-None-Match"),
                           ("Access-Control-Max-Age", "600")]
        elif path == BULK_PATH or path == BULK_PATH + "/":
            endpoint = "bulk"
            if method != "POST":
                raise _Reply(405, {"errorDetails": "Use POST."}, [("Allow", "POST, OPTIONS")])
            status, body, headers = _evaluate_bulk(environ)
        elif path.startswith(SINGLE_PREFIX):
            endpoint = "single"
            if method != "POST":
                raise _Reply(405, {"errorDetails": "Use POST."}, [("Allow", "POST, OPTIONS")])
            flag_key = path[len(SINGLE_PREFIX):].rstrip("/")
            try:
                status, payload, headers = _evaluate_single(environ, flag_key)
            except _Reply as reply:
                if reply.body and "errorCode" in reply.body:
                    reply.body = {"key": flag_key, **reply.body}  # evaluationFailure requires the key
                raise
            body = _dumps(payload).encode()
        elif path == CONFIGURATION_PATH:
            endpoint = "configuration"
            if method != "GET":
                raise _Reply(405, {"errorDetails": "Use GET."}, [("Allow", "GET, OPTIONS")])
            _authenticate(environ)
            status, body = 200, _dumps(_configuration()).encode()
        else:
            raise _Reply(404, {"errorDetails": "No such OFREP endpoint."})
    except _Reply as reply:
        status, headers = reply.status, reply.headers
        body = _dumps(reply.body).encode() if reply.body is not None else b""
    except Exception:  # noqa: BLE001 - an unexpected fault must still answer in the protocol's shape
        logger.exception("OFREP request failed: %s %s", method, path)
        status, headers, body = 500, [], _dumps({"errorDetails": "Internal error."}).encode()
    response_headers = [("Content-Type", "application/json")] if body else []
    response_headers += [("Content-Length", str(len(body))), *headers, *cors]
    start_response(_STATUS.get(status, f"{status} Error"), response_headers)
    ofrep_request_observe(endpoint, status, time.perf_counter() - started)
    return [body]


def with_ofrep(django_application: WSGIApp) -> WSGIApp:
    """Serve /ofrep/v1/... from the lean OFREP app and everything else from Django."""

    def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith(PREFIX):
            return ofrep_application(environ, start_response)
        return django_application(environ, start_response)

    return application
