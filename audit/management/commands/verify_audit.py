from __future__ import annotations

import time
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import CheckpointKeyError, checkpoint_key, key_id
from audit.verify import CheckpointReport, verify_chain, verify_checkpoints

SHOWN_PROBLEMS = 20


class Command(BaseCommand):
    help = ("Verify the audit trail's hash chain; exit non-zero naming the first bad row. With --checkpoints, "
            "also compare it with published checkpoints, naming the first bad checkpoint.")

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--checkpoints", nargs="?", const="", default=None, metavar="PATH",
            help="A JSON Lines file of published checkpoints (default: AUDIT_CHECKPOINT_PATH). Each line's "
                 "signature is checked with AUDIT_CHECKPOINT_KEY and the chain recomputed up to it must match.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["checkpoints"] is not None:
            self._with_checkpoints(Path(options["checkpoints"] or settings.AUDIT_CHECKPOINT_PATH))
            return
        started = time.monotonic()
        report = verify_chain()
        elapsed = time.monotonic() - started
        if not report.ok:
            raise CommandError(f"audit chain broken at row #{report.bad_id}: {report.problem} "
                               f"({report.rows} rows read, {elapsed:.1f} s)")
        self.stdout.write(self.style.SUCCESS(
            f"audit chain intact: {report.rows} rows in {elapsed:.1f} s; head #{report.head_id} {report.head_hash}"))
        self.stdout.write("The chain alone cannot show a rewrite whose later hashes were recomputed, nor rows cut "
                          "off its end: check it against published checkpoints too (--checkpoints).")

    def _with_checkpoints(self, path: Path) -> None:
        try:
            key = checkpoint_key()
        except CheckpointKeyError as exc:
            raise CommandError(str(exc)) from None
        if not path.is_file():
            raise CommandError(f"no checkpoint file at {path}")
        started = time.monotonic()
        with path.open(encoding="utf-8", errors="replace") as lines:
            report = verify_checkpoints(lines, key=key)
        elapsed = time.monotonic() - started
        for problem in report.problems[:SHOWN_PROBLEMS]:
            self.stderr.write(str(problem))
        if len(report.problems) > SHOWN_PROBLEMS:
            self.stderr.write(f"… and {len(report.problems) - SHOWN_PROBLEMS} more bad checkpoint lines")
        if not report.ok:
            raise CommandError(self._failure(report, path, elapsed))
        chain, latest = report.chain, report.latest
        checkpoints = f"{report.matched} checkpoint{'' if report.matched == 1 else 's'}"
        self.stdout.write(self.style.SUCCESS(
            f"audit chain intact and matching {checkpoints} in {path} (key {key_id(key)}): "
            f"{chain.rows} rows in {elapsed:.1f} s; head #{chain.head_id} {chain.head_hash}"))
        if latest is not None:  # always, when the report is ok
            self.stdout.write(f"Latest checkpoint: event #{latest.head_id}, taken {latest.created_at}; "
                              f"{chain.rows - latest.count} rows were appended after it and no checkpoint "
                              f"covers them yet.")

    def _failure(self, report: CheckpointReport, path: Path, elapsed: float) -> str:
        found = f"({report.lines} checkpoint lines in {path}, {report.chain.rows} rows read, {elapsed:.1f} s)"
        chain = (f"; and the chain itself is broken at row #{report.chain.bad_id}: {report.chain.problem}"
                 if not report.chain.ok else "")
        if report.problems:
            return (f"first bad checkpoint: {report.problems[0]} — {len(report.problems)} of {report.lines} "
                    f"lines fail{chain} {found}")
        if not report.chain.ok:
            return f"audit chain broken at row #{report.chain.bad_id}: {report.chain.problem} {found}"
        return f"no checkpoints to compare with: nothing anchors the chain {found}"
