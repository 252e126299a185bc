from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.verify import verify_chain


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain; exit non-zero naming the first bad row."

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        report = verify_chain()
        elapsed = time.monotonic() - started
        if not report.ok:
            raise CommandError(f"audit chain broken at row #{report.bad_id}: {report.problem} "
                               f"({report.rows} rows read, {elapsed:.1f} s)")
        self.stdout.write(self.style.SUCCESS(
            f"audit chain intact: {report.rows} rows in {elapsed:.1f} s; head #{report.head_id} {report.head_hash}"))
        self.stdout.write("Keep the head hash somewhere else: a chain cannot prove that its newest rows were not cut off.")
