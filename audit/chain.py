"""The hash chain: each audit row carries SHA-256 over its canonical content and the previous
row's hash, so altering, removing or inserting a row breaks the chain at that point.

One global chain, in id order. On PostgreSQL appends are serialised by a transaction-level
advisory lock taken before reading the chain's head, so two transactions appending at once
queue rather than fork. (SQLite, the embedded default, serialises writers itself but offers
no such lock: concurrent appends there may fork, which verify_audit reports.)
"""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any

GENESIS = "0" * 64
ADVISORY_LOCK_KEY = 0x41554449545F  # "AUDIT_"

# The fields the hash covers, in this order. Adding one is a new chain version, not an edit.
HASHED_FIELDS = (
    "created_at", "actor_id", "actor_label", "actor_kind", "action", "target_type", "target_id", "target_label",
    "project_id", "project_label", "environment_id", "environment_label", "flag_id", "before", "after", "summary",
    "reason", "correlation_id", "request_ip", "user_agent", "change_request_id",
)


def canonical_json(value: Any) -> str:
    """The one text form of a JSON value: sorted keys, no spaces, Unicode kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _canonical_field(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name == "created_at":
        return value.astimezone(datetime.UTC).isoformat(timespec="microseconds")
    if name in ("before", "after"):
        return canonical_json(value)
    return str(value)


def row_hash(values: dict[str, Any], prev_hash: str) -> str:
    content = [_canonical_field(name, values[name]) for name in HASHED_FIELDS]
    digest = hashlib.sha256(prev_hash.encode())
    digest.update(json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode())
    return digest.hexdigest()
