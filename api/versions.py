"""Optimistic concurrency: `ETag` on what a client may change, `If-Match` on the change.

A resource's entity tag is its row version (`"v7"`); a write that carries `If-Match` passes that
version to the service, which refuses it under the row's lock when the row has moved on (412
`stale_version`, `flags.services.ConflictError`). A write without `If-Match` is taken as "the
current version", as the console's forms are. `If-Match: *` matches any version."""

from __future__ import annotations

import re

from django.http import HttpRequest, HttpResponse

from api.problems import ApiError

_TAG = re.compile(r'^\s*(?:W/)?"v(\d{1,9})"\s*$')


def etag(version: int) -> str:
    return f'"v{version}"'


def expected_version(request: HttpRequest) -> int | None:
    """The version named by If-Match, None when absent or `*`; 412 for a tag of no version."""
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    match = _TAG.match(header)
    if not match:
        raise ApiError(412, "stale_version", "If-Match names no version of this resource: send the ETag "
                                             "of your last read (e.g. \"v3\").")
    return int(match.group(1))


def tagged(response: HttpResponse, version: int) -> HttpResponse:
    response["ETag"] = etag(version)
    return response
