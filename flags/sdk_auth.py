"""SDK-key authentication for the machine endpoints (OFREP, the events API): one rule, read
from the process's snapshot store, never the database.

The key comes as `Authorization: Bearer <key>` or `X-API-Key: <key>`. No key or an unknown key
is 401 (with a Bearer challenge naming the endpoint's realm), a revoked key 403, and a store
that has not loaded any snapshot yet 503 with Retry-After. Each endpoint words the refusal in
its own protocol's shape."""

from __future__ import annotations

from typing import Any

from flags.evaluation.engine import Snapshot
from flags.services.sdk_keys import hash_sdk_key
from flags.snapshot_store import get_store


class SdkKeyRefused(Exception):
    """Why a request's SDK key was not accepted: an HTTP status, an error code and the details."""

    def __init__(self, status: int, code: str, details: str, headers: list[tuple[str, str]]) -> None:
        super().__init__(details)
        self.status, self.code, self.details, self.headers = status, code, details, headers


def raw_sdk_key(environ: dict[str, Any]) -> str:
    authorization = environ.get("HTTP_AUTHORIZATION", "")
    raw_key = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    return raw_key or environ.get("HTTP_X_API_KEY", "").strip()


def authenticate(environ: dict[str, Any], *, realm: str) -> Snapshot:
    """The snapshot of the environment the request's SDK key belongs to, or SdkKeyRefused."""
    challenge = [("WWW-Authenticate", f'Bearer realm="{realm}"')]
    raw_key = raw_sdk_key(environ)
    if not raw_key:
        raise SdkKeyRefused(401, "UNAUTHORIZED", "An SDK key is required: Authorization: Bearer <key> or X-API-Key.",
                            challenge)
    found = get_store().lookup(hash_sdk_key(raw_key))
    if found.status == "revoked":
        raise SdkKeyRefused(403, "FORBIDDEN", "This SDK key has been revoked.", [])
    if found.status == "unavailable":
        raise SdkKeyRefused(503, "UNAVAILABLE", "Flag data is not available yet; retry shortly.", [("Retry-After", "1")])
    if found.snapshot is None:
        raise SdkKeyRefused(401, "UNAUTHORIZED", "Unknown SDK key.", challenge)
    return found.snapshot
