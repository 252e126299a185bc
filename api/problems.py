"""Errors as RFC 9457 problem details (`application/problem+json`).

Every refusal of the API has the same body: `type` (a URN naming the problem), `title`, `status`,
`detail`, `code` and, for invalid input, `errors`: one entry per field with its path ("name",
"rules.0.clauses") and message. Services raise Django's ValidationError (422, or 403 for a
permission `Refused`, 412 for a stale version); views raise `ApiError` for the rest.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as SchemaError

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


def install(api: NinjaAPI) -> None:
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
        return problem(request, exc.status_code, "http_error", str(exc))

    @api.exception_handler(Http404)
    def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
        return problem(request, 404, "not_found", str(exc) or "Not found.")

    @api.exception_handler(ObjectDoesNotExist)
    def missing(request: HttpRequest, exc: ObjectDoesNotExist) -> HttpResponse:
        return problem(request, 404, "not_found", "Not found.")
