"""The audit trail's export formats, shared by the console's export and the API's: the same
columns and the same cells. CSV neutralises spreadsheet formulas; JSON lines keep the data."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

EXPORT_FIELDS = ("id", "created_at", "actor_id", "actor_label", "actor_kind", "action", "project_id",
                 "project_label", "environment_label", "target_type", "target_id", "target_label", "summary",
                 "reason", "before", "after", "correlation_id", "request_ip", "change_request_id", "hash")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet will not run: text starting like a formula (OWASP's list: = + - @,
    tab, carriage return) is prefixed with an apostrophe, so `=HYPERLINK(…)` in a reason
    reads as text. Everything else is written as it is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_rows(rows: Iterator[dict]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_FIELDS)
    for row in rows:
        writer.writerow([csv_cell(
            json.dumps(row[f], ensure_ascii=False) if f in ("before", "after") and row[f] is not None
            else row[f].isoformat() if f == "created_at" else row[f]) for f in EXPORT_FIELDS])
        if buffer.tell() > 64_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def jsonl_rows(rows: Iterator[dict]) -> Iterator[str]:
    lines = []
    for row in rows:
        row["created_at"] = row["created_at"].isoformat()
        lines.append(json.dumps(row, ensure_ascii=False, default=str))
        if len(lines) >= 500:
            yield "\n".join(lines) + "\n"
            lines = []
    if lines:
        yield "\n".join(lines) + "\n"
