"""Errors as RFC 9457 problem details (`application/problem+json`).

Every refusal of the API has the same body: `type` (a URN naming the problem), `title`, `status`,
`detail`, `code` and, for invalid input, `errors`: one entry per field with its path ("name",
"rules.0.clauses") and message. Services raise Django's ValidationError (422, or 403 for a
permission `Refused`, 412 for a stale version); views raise `ApiError` for the rest.

Text PostgreSQL cannot store is refused before any view runs, as the console's forms refuse it
(a 500 at the database otherwise): a NUL character in the path (404: it names nothing) or in the
query string (422), a NUL or an unpaired surrogate anywhere in a body (422, with its path). And a
JSON body must be an object, as every body the document describes is: django-ninja's own parser
read `0`, `null` or `[]` as an empty object, so a PATCH of anything answered 200.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as SchemaError
from ninja.parser import Parser

from api.json import dumps
from flags.permissions import Refused
from flags.services import ConflictError

TITLES = {
    400: "Bad request", 401: "Not signed in", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
    409: "Conflict", 412: "Precondition failed", 413: "Too large", 415: "Unsupported media type",
    422: "Invalid input", 428: "Precondition required", 429: "Too many requests", 500: "Server error",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, *, errors: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.errors, self.headers = errors or [], headers or {}


def problem(request: HttpRequest, status: int, code: str, detail: str, *, errors: list[dict[str, str]] | None = None,
            headers: dict[str, str] | None = None) -> HttpResponse:
    body: dict[str, Any] = {"type": f"urn:featureops:problem:{code}", "title": TITLES.get(status, "Error"),
                            "status": status, "detail": detail, "code": code, "instance": request.path}
    if errors:
        body["errors"] = errors
    response = HttpResponse(dumps(body), status=status, content_type="application/problem+json")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    if hasattr(exc, "error_dict"):
        return [{"path": "" if name == "__all__" else name, "message": message}
                for name, errors in exc.error_dict.items() for error in errors for message in error.messages]
    return [{"path": "", "message": message} for message in exc.messages]


def _schema_path(location: list[Any]) -> str:
    # ninja reports ("body", "payload", "field", 0, ...) or ("query", "name"): drop the wrappers.
    parts = [str(p) for p in location]
    if parts[:2] == ["body", "payload"]:
        parts = parts[2:]
    elif parts and parts[0] in ("query", "path", "body", "header"):
        parts = parts[1:]
    return ".".join(parts)


_JSON_TYPES = {str: "string", bool: "boolean", int: "number", float: "number"}
# What PostgreSQL refuses in text and jsonb: NUL; and what UTF-8 cannot encode: a lone surrogate
# (JSON's "\ud800" without its pair; pairs arrive joined).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_UNSTORABLE_MESSAGE = "Text may not contain NUL characters or unpaired surrogates."


def _unstorable_text(body: Any) -> str | None:
    """The path of the first key or string in `body` the database cannot store (iterative: bodies nest deep)."""
    pending: list[tuple[str, Any]] = [("", body)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, str) and _UNSTORABLE.search(value):
            return path
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            if isinstance(key, str) and _UNSTORABLE.search(key):
                return path
            pending.append((f"{path}.{key}" if path else str(key), item))
    return None


class JsonObjects(Parser):
    """JSON bodies: objects only, holding only text the database can store."""

    def parse_body(self, request: HttpRequest) -> dict[str, Any]:
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"The body is not JSON: {exc}.") from exc
        if not isinstance(body, dict):
            kind = "null" if body is None else "an array" if isinstance(body, list) else f"a {_JSON_TYPES[type(body)]}"
            raise ApiError(400, "invalid_body", f"The body must be a JSON object, not {kind}.")
        path = _unstorable_text(body)
        if path is not None:
            raise ApiError(422, "invalid", _UNSTORABLE_MESSAGE, errors=[{"path": path, "message": _UNSTORABLE_MESSAGE}])
        return body


def _storable_url(run: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A NUL in the path names nothing (404); in the query string it is invalid input (422)."""

    @wraps(run)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if "\x00" in request.path:
            return problem(request, 404, "not_found", "Not found: the path holds a NUL character.")
        for name, values in request.GET.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                return problem(request, 422, "invalid", _UNSTORABLE_MESSAGE,
                               errors=[{"path": name.replace("\x00", ""), "message": _UNSTORABLE_MESSAGE}])
        return run(request, *args, **kwargs)

    return checked


def install(api: NinjaAPI) -> None:
    api.parser = JsonObjects()
    # "view": around each operation before its parameters are read, so before any lookup.
    api.add_decorator(_storable_url, mode="view")

    @api.exception_handler(ApiError)
    def api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
        return problem(request, exc.status, exc.code, exc.detail, errors=exc.errors, headers=exc.headers)

    @api.exception_handler(Refused)
    def refused(request: HttpRequest, exc: Refused) -> HttpResponse:
        return problem(request, 403, "forbidden", " ".join(exc.messages))

    @api.exception_handler(ConflictError)
    def conflict(request: HttpRequest, exc: ConflictError) -> HttpResponse:
        return problem(request, 412, "stale_version", " ".join(exc.messages))

    @api.exception_handler(ValidationError)
    def invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        errors = field_errors(exc)
        return problem(request, 422, "invalid", "; ".join(e["message"] for e in errors[:3]) or "Invalid input.",
                       errors=errors)

    @api.exception_handler(SchemaError)
    def schema_invalid(request: HttpRequest, exc: SchemaError) -> HttpResponse:
        errors = [{"path": _schema_path(list(e.get("loc", ()))), "message": str(e.get("msg", "Invalid value."))}
                  for e in exc.errors]
        return problem(request, 422, "invalid", "The request does not match the API's schema.", errors=errors)

    @api.exception_handler(AuthenticationError)
    def unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return problem(request, 401, "unauthorized", "An API token is required: Authorization: Bearer <token>.",
                       headers={"WWW-Authenticate": 'Bearer realm="featureops-api"'})

    @api.exception_handler(HttpError)
    def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        if isinstance(exc.__cause__, ApiError):  # ninja wraps what the body parser raised
            return api_error(request, exc.__cause__)
        return problem(request, exc.status_code, "http_error", str(exc))

    @api.exception_handler(Http404)
    def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
        return problem(request, 404, "not_found", str(exc) or "Not found.")

    @api.exception_handler(ObjectDoesNotExist)
    def missing(request: HttpRequest, exc: ObjectDoesNotExist) -> HttpResponse:
        return problem(request, 404, "not_found", "Not found.")
