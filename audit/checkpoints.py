"""Checkpoints: the chain's head, signed with a key that is not in the database, and
published to places outside it.

The hash chain shows that rows were changed *unless* whoever changed them also recomputed
every later hash, which anyone holding the application's database role can do (it owns the
table, so it can switch the append-only trigger off). A checkpoint (head event id, head
hash, row count, time) signed with HMAC-SHA256 under `AUDIT_CHECKPOINT_KEY` pins the chain
as it stood: without the key nobody can sign a checkpoint of a rewritten chain, and
`verify_audit --checkpoints` recomputes the chain and compares it with each published one.

`checkpoint_publish()` takes one and hands it to every callable listed in
`settings.AUDIT_CHECKPOINT_PUBLISHERS` (dotted paths, like `AUDIT_COMMIT_OBSERVERS`), so
`audit` imports no other app: the file publisher is here, the webhook and email ones live in
`flags.audit_checkpoints`. A checkpoint is never written to the audit trail itself: that row
would move the head it certifies.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from audit.chain import canonical_json
from audit.models import AuditEvent

logger = logging.getLogger(__name__)

VERSION = 1
KEY_MIN_LENGTH = 32
# The event name project webhooks receive checkpoints under.
WEBHOOK_EVENT = "audit.checkpoint"
SIGNED_FIELDS = ("v", "head_id", "head_hash", "count", "created_at", "key_id")
_hex64 = re.compile(r"^[0-9a-f]{64}\Z")


class CheckpointKeyError(Exception):
    """AUDIT_CHECKPOINT_KEY is missing or too short: nothing can be signed or verified."""


class CheckpointLineError(ValueError):
    """A checkpoint line that is not a well-formed checkpoint signed with the configured key."""


def checkpoint_key() -> bytes:
    """The signing key, from the environment (settings), never from the database. There is no
    fallback outside DEBUG: a random per-process key would sign checkpoints nobody can check."""
    key = getattr(settings, "AUDIT_CHECKPOINT_KEY", "") or ""
    if not key:
        raise CheckpointKeyError("AUDIT_CHECKPOINT_KEY is not set: checkpoints can be neither signed nor verified "
                                 "without the key (keep it out of the database).")
    if len(key) < KEY_MIN_LENGTH:
        raise CheckpointKeyError(f"AUDIT_CHECKPOINT_KEY is shorter than {KEY_MIN_LENGTH} characters.")
    return key.encode()


def key_id(key: bytes) -> str:
    """A short public name for a key, so a line signed with another key is reported as such
    rather than as a forgery. It reveals nothing an HMAC does not already."""
    return hmac.new(key, b"featureops audit checkpoint key id", hashlib.sha256).hexdigest()[:16]


def _signature(fields: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical_json(fields).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    head_id: int
    head_hash: str
    count: int
    created_at: str
    key_id: str
    signature: str

    def as_dict(self) -> dict[str, Any]:
        """The published form: the same object in the file, the webhook's `data` and the email."""
        return {"v": VERSION, "head_id": self.head_id, "head_hash": self.head_hash, "count": self.count,
                "created_at": self.created_at, "key_id": self.key_id, "signature": self.signature}

    def as_line(self) -> str:
        return canonical_json(self.as_dict())


def checkpoint_take(*, key: bytes) -> Checkpoint | None:
    """Sign the chain's current head; None while the chain is empty.

    The count is of rows up to the head: appends are serialised (audit.services._lock_chain)
    and commit in id order, so no row below the head can commit after this read."""
    with transaction.atomic():
        head = AuditEvent.objects.order_by("-id").values("id", "hash").first()
        if head is None:
            return None
        count = AuditEvent.objects.filter(id__lte=head["id"]).count()
    fields = {"v": VERSION, "head_id": head["id"], "head_hash": head["hash"], "count": count,
              "created_at": timezone.now().isoformat(timespec="seconds"), "key_id": key_id(key)}
    return Checkpoint(head_id=head["id"], head_hash=head["hash"], count=count, created_at=fields["created_at"],
                      key_id=fields["key_id"], signature=_signature(fields, key))


def checkpoint_publish() -> Checkpoint | None:
    """Take a checkpoint and hand it to every publisher. A failing publisher is logged and the
    others still run: several destinations exist so that losing one loses nothing.
    Raises CheckpointKeyError without a usable key."""
    key = checkpoint_key()
    checkpoint = checkpoint_take(key=key)
    if checkpoint is None:
        logger.info("Audit checkpoint skipped: the audit trail is empty.")
        return None
    for path in getattr(settings, "AUDIT_CHECKPOINT_PUBLISHERS", ()):
        try:
            _resolve_publisher(path)(checkpoint)
        except Exception:
            logger.exception("Audit checkpoint publisher %s failed (checkpoint of event #%s).", path,
                             checkpoint.head_id)
    logger.info("Audit checkpoint published: event #%s, %s rows, %s.", checkpoint.head_id, checkpoint.count,
                checkpoint.head_hash)
    return checkpoint


@functools.cache
def _resolve_publisher(path: str) -> Callable[[Checkpoint], object]:
    return import_string(path)


def append_to_file(checkpoint: Checkpoint) -> None:
    """Publisher: one JSON line appended to AUDIT_CHECKPOINT_PATH. A single write to a file
    opened with O_APPEND, so concurrent runs never interleave lines; fsync'd, as lines are rare."""
    path = Path(settings.AUDIT_CHECKPOINT_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(descriptor, (checkpoint.as_line() + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def checkpoint_from_line(line: str, *, key: bytes) -> Checkpoint:
    """Parse one published checkpoint and check its signature. Raises CheckpointLineError
    saying what is wrong: not a checkpoint, signed with another key, or altered/forged."""
    try:
        fields = json.loads(line)
    except ValueError as exc:
        raise CheckpointLineError("not JSON: a damaged or foreign line") from exc
    if not isinstance(fields, dict) or not isinstance(fields.get("signature"), str):
        raise CheckpointLineError("not a checkpoint (no signature)")
    signature = fields.pop("signature")
    expected_key_id = key_id(key)
    if fields.get("key_id") != expected_key_id:
        raise CheckpointLineError(f"signed with key {fields.get('key_id')!r}, not with the configured "
                                  f"AUDIT_CHECKPOINT_KEY ({expected_key_id}): the wrong key, or a forged line")
    # The MAC covers every field but the signature, so an added field fails it too.
    if not hmac.compare_digest(_signature(fields, key), signature):
        raise CheckpointLineError("its signature does not match its content: the line was altered or forged")
    if set(fields) != set(SIGNED_FIELDS) or fields["v"] != VERSION:
        raise CheckpointLineError(f"signed, but not a version {VERSION} checkpoint")
    head_id, count, head_hash = fields["head_id"], fields["count"], fields["head_hash"]
    if (type(head_id) is not int or type(count) is not int or head_id < 1 or count < 1
            or not isinstance(head_hash, str) or not _hex64.match(head_hash)
            or not isinstance(fields["created_at"], str)):
        raise CheckpointLineError("signed, but its fields have the wrong types")
    return Checkpoint(head_id=head_id, head_hash=head_hash, count=count, created_at=fields["created_at"],
                      key_id=fields["key_id"], signature=signature)
