"""How a delivery is signed, and how a receiver checks it.

The signed message is `"{timestamp}.{body}"`: the X-FeatureOps-Timestamp header (Unix
seconds), a dot, and the raw request body exactly as received. The signature header is
`X-FeatureOps-Signature: sha256=<hex HMAC-SHA256 of that message, keyed with the secret>`.
A receiver recomputes it over the raw bytes (before any JSON parsing), compares in constant
time, and refuses timestamps too far from its clock, so a captured request cannot be replayed
later. `verify` below is the reference; it needs only the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

SIGNATURE_PREFIX = "sha256="
DEFAULT_TOLERANCE_SECONDS = 300


def canonical_body(envelope: object) -> bytes:
    """The bytes sent: sorted keys, no spaces, UTF-8."""
    return json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify(secret: str, timestamp: str, body: bytes, signature: str, *,
           tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS, now: float | None = None) -> bool:
    """What a receiver does: True when the signature matches and the timestamp is recent."""
    try:
        sent_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - sent_at) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)
