"""Walks the audit chain in id order and reports the first row that breaks it, and compares
the chain with published checkpoints (audit/checkpoints.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from audit.chain import GENESIS, HASHED_FIELDS, row_hash
from audit.checkpoints import Checkpoint, CheckpointLineError, checkpoint_from_line
from audit.models import AuditEvent

CHUNK = 5_000
REMOVED_OR_INSERTED = "its previous-row hash does not match the row before it: a row was removed or inserted here"
ALTERED = "its content does not match its hash: the row was altered"


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


@dataclass(frozen=True, slots=True)
class Link:
    """One row as the walk sees it."""

    id: int
    position: int  # how many rows up to and including this one
    recomputed_hash: str  # the chain recomputed from the rows' content, from the genesis hash
    stored_hash: str
    problem: str  # "" when the row agrees with its stored hashes


def chain_links() -> Iterator[Link]:
    """Keyset walk (constant memory, no OFFSET). A row whose content no longer matches its
    hash was altered; a row whose prev_hash is not the previous row's hash follows a removal
    or an insertion (or is itself inserted). Alongside, the chain is recomputed from content
    alone, which is what a checkpoint is compared with."""
    fields = ("id", "prev_hash", "hash", *HASHED_FIELDS)
    stored_prev = recomputed_prev = GENESIS
    position, last_id = 0, 0
    while True:
        chunk = list(AuditEvent.objects.filter(id__gt=last_id).order_by("id").values(*fields)[:CHUNK])
        if not chunk:
            return
        for values in chunk:
            position += 1
            recomputed = row_hash(values, recomputed_prev)
            # While the stored chain is sound the two coincide, and one hash per row is enough.
            content_hash = recomputed if values["prev_hash"] == recomputed_prev else row_hash(values, values["prev_hash"])
            if values["prev_hash"] != stored_prev:
                problem = REMOVED_OR_INSERTED
            elif content_hash != values["hash"]:
                problem = ALTERED
            else:
                problem = ""
            yield Link(values["id"], position, recomputed, values["hash"], problem)
            stored_prev, recomputed_prev = values["hash"], recomputed
        last_id = chunk[-1]["id"]


def verify_chain() -> ChainReport:
    rows, head_id, head_hash = 0, None, GENESIS
    for link in chain_links():
        if link.problem:
            return ChainReport(link.position, link.id, link.stored_hash, link.id, link.problem)
        rows, head_id, head_hash = link.position, link.id, link.stored_hash
    return ChainReport(rows, head_id, head_hash)


@dataclass(frozen=True)
class CheckpointProblem:
    line: int
    head_id: int | None  # None when the line itself cannot be trusted
    message: str

    def __str__(self) -> str:
        where = f"checkpoint line {self.line}" + (f" (event #{self.head_id})" if self.head_id is not None else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class CheckpointReport:
    chain: ChainReport
    lines: int  # checkpoint lines read (blank ones aside)
    matched: int  # lines whose signature holds and whose chain position matches
    latest: Checkpoint | None  # the matching checkpoint furthest along the chain
    problems: tuple[CheckpointProblem, ...]  # in line order

    @property
    def ok(self) -> bool:
        return self.chain.ok and self.matched > 0 and not self.problems


def verify_checkpoints(lines: Iterable[str], *, key: bytes) -> CheckpointReport:
    """Check each published checkpoint's signature, then walk the chain once and compare:
    the event it names must still exist, and the chain recomputed up to it must give its
    hash and its row count. A row rewritten with every later hash recomputed fails the first
    checkpoint after it; rows cut off the end leave checkpoints naming events that are gone.

    The walk holds one chunk of rows; the checkpoints (a few hundred bytes each, one per beat
    interval) are held whole so that they can be met in chain order."""
    problems: list[CheckpointProblem] = []
    pending: list[tuple[int, int, Checkpoint]] = []
    read = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        read += 1
        try:
            checkpoint = checkpoint_from_line(line, key=key)
        except CheckpointLineError as exc:
            problems.append(CheckpointProblem(number, None, str(exc)))
            continue
        pending.append((checkpoint.head_id, number, checkpoint))
    pending.sort(key=lambda item: (item[0], item[1]))

    matched, latest, last_good = 0, None, None
    first_break: Link | None = None
    end: Link | None = None
    index = 0
    for link in chain_links():
        end = link
        if link.problem and first_break is None:
            first_break = link
        while index < len(pending) and pending[index][0] <= link.id:
            _, number, checkpoint = pending[index]
            index += 1
            if checkpoint.head_id < link.id:
                problems.append(CheckpointProblem(number, checkpoint.head_id, _gone(checkpoint, last_good)))
            elif (link.recomputed_hash, link.position) != (checkpoint.head_hash, checkpoint.count):
                problems.append(CheckpointProblem(number, checkpoint.head_id, _mismatch(checkpoint, link, last_good)))
            else:
                matched += 1
                latest = last_good = checkpoint
    for _, number, checkpoint in pending[index:]:
        problems.append(CheckpointProblem(number, checkpoint.head_id, (
            f"event #{checkpoint.head_id} is gone: the chain now ends at "
            f"{f'#{end.id} with {end.position} rows' if end else 'nothing (no rows)'}, the checkpoint counted "
            f"{checkpoint.count}: rows were deleted from the end")))
    if first_break is not None:
        chain = ChainReport(first_break.position, first_break.id, first_break.stored_hash, first_break.id,
                            first_break.problem)
    elif end is not None:
        chain = ChainReport(end.position, end.id, end.stored_hash)
    else:
        chain = ChainReport(0, None, GENESIS)
    return CheckpointReport(chain, read, matched, latest, tuple(sorted(problems, key=lambda p: p.line)))


def _since(last_good: Checkpoint | None) -> str:
    return (f"after event #{last_good.head_id} (the last checkpoint that matches, taken {last_good.created_at})"
            if last_good else "and no earlier checkpoint matches")


def _gone(checkpoint: Checkpoint, last_good: Checkpoint | None) -> str:
    return (f"event #{checkpoint.head_id} no longer exists (taken {checkpoint.created_at}): rows were deleted "
            f"{_since(last_good)}")


def _mismatch(checkpoint: Checkpoint, link: Link, last_good: Checkpoint | None) -> str:
    if link.position != checkpoint.count:
        what = (f"the chain has {link.position} rows up to here, the checkpoint counted {checkpoint.count}: "
                f"rows were removed or inserted")
    else:
        what = (f"the chain recomputed up to here gives {link.recomputed_hash[:16]}…, the checkpoint says "
                f"{checkpoint.head_hash[:16]}…: a row was rewritten")
    return f"does not match the chain (taken {checkpoint.created_at}): {what} at or before this event, {_since(last_good)}"
