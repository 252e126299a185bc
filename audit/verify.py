"""Walks the audit chain in id order and reports the first row that breaks it."""

from __future__ import annotations

from dataclasses import dataclass

from audit.chain import GENESIS, HASHED_FIELDS, row_hash
from audit.models import AuditEvent

CHUNK = 5_000


@dataclass(frozen=True)
class ChainReport:
    rows: int
    head_id: int | None
    head_hash: str
    bad_id: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.bad_id is None


def verify_chain() -> ChainReport:
    """Keyset walk (constant memory, no OFFSET). A row whose content no longer matches its
    hash was altered; a row whose prev_hash is not the previous row's hash follows a removal
    or an insertion (or is itself inserted)."""
    fields = ("id", "prev_hash", "hash", *HASHED_FIELDS)
    expected_prev = GENESIS
    rows, last_id = 0, 0
    while True:
        chunk = list(AuditEvent.objects.filter(id__gt=last_id).order_by("id").values(*fields)[:CHUNK])
        if not chunk:
            break
        for values in chunk:
            rows += 1
            if values["prev_hash"] != expected_prev:
                return ChainReport(rows, values["id"], values["hash"], values["id"],
                                   "its previous-row hash does not match the row before it: "
                                   "a row was removed or inserted here")
            if row_hash(values, values["prev_hash"]) != values["hash"]:
                return ChainReport(rows, values["id"], values["hash"], values["id"],
                                   "its content does not match its hash: the row was altered")
            expected_prev = values["hash"]
        last_id = chunk[-1]["id"]
    return ChainReport(rows, last_id or None, expected_prev)
