"""Cursor pagination: `?limit=` (1–200, default 50) and the opaque `cursor` of the last page.

The cursor encodes the sort key of the last row served, so pages stay stable while rows are
added (no offsets that skip or repeat). Responses carry `next_cursor` (null on the last page)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.db.models import Q, QuerySet

from api.problems import ApiError

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def encode(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values), separators=(",", ":")).encode()).decode().rstrip("=")


def decode(cursor: str, size: int) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError):
        values = None
    if not isinstance(values, list) or len(values) != size or not all(isinstance(v, (str, int)) for v in values):
        raise ApiError(400, "invalid_cursor", "This cursor is not one the API gave out; start from the first page.")
    return values


def page(queryset: QuerySet, *, order: Sequence[str], cursor: str | None, limit: int,
         key: Callable[[Any], Sequence[Any]]) -> tuple[list[Any], str | None]:
    """One page of `queryset` ordered by `order` (field names, a leading "-" for descending; the
    last one unique), after `cursor`; and the cursor of the next page."""
    queryset = queryset.order_by(*order)
    if cursor:
        after = decode(cursor, len(order))
        queryset = queryset.filter(_after(order, after))
    rows = list(queryset[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode(key(rows[-1])) if more and rows else None)


def _after(order: Sequence[str], values: Sequence[Any]) -> Q:
    """Rows strictly after `values` in the (lexicographic) order."""
    condition = Q()
    for index, field in enumerate(order):
        name = field.lstrip("-")
        op = "lt" if field.startswith("-") else "gt"
        step = Q(**{f"{name}__{op}": values[index]})
        for earlier, value in zip(order[:index], values[:index], strict=False):
            step &= Q(**{earlier.lstrip("-"): value})
        condition |= step
    return condition
