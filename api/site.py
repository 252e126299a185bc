"""The management API, version 1 (`/api/v1/`): django-ninja, OpenAPI 3.1 at
`/api/v1/openapi.json`, its reference at `/api/v1/docs`.

Why django-ninja rather than Django REST framework with drf-spectacular: the document is
generated from the same type hints that parse and validate each request (pydantic), in OpenAPI
3.1 natively, with no second description to keep in step; its reference page ships as static
files that run under our Content-Security-Policy (no inline script, no CDN); and our views stay
plain functions calling our services, as the console's do, with no serializer layer to hold
business rules. Permission rules, change control and the served-state policy are the console's
own (flags.permissions, rollouts.change_control): the API adds tokens, scopes and HTTP shapes.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI

from api import problems
from api.auth import TokenAuth


def not_found(request: HttpRequest) -> HttpResponse:
    """Under /api/v1/, a path no operation matches answers a problem, not the console's page."""
    return problems.problem(request, 404, "not_found", "No such API path: see /api/v1/docs.")


class ManagementApi(NinjaAPI):
    def get_openapi_schema(self, *args: Any, **kwargs: Any) -> Any:
        """Errors are problem details: document their media type as served."""
        schema = super().get_openapi_schema(*args, **kwargs)
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if str(status).startswith(("4", "5")) and "application/json" in content:
                        content["application/problem+json"] = content.pop("application/json")
        return schema


api = ManagementApi(
    title="FeatureOps Console management API",
    version="1",
    description=(
        "Projects, flags, targeting, change requests, kill switches, rollout plans, the audit trail and "
        "flags as code, governed exactly as in the console: risky changes answer 202 with the change request "
        "they opened. Authenticate with `Authorization: Bearer <token>` (a personal or a service token, made "
        "in the console). Errors are RFC 9457 problem details."
    ),
    auth=TokenAuth(),
    urls_namespace="api-v1",
)
problems.install(api)

# Routers register on the api above.
from api.routers import (  # noqa: E402
    audit,
    catalog,
    change_requests,
    flags_as_code,
    operations,
    plans,
    segments,
    webhooks,
)

for module in (catalog, segments, change_requests, operations, plans, flags_as_code, audit, webhooks):
    api.add_router("/", module.router)
