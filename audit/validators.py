"""Free-text limits (audit.constants.TEXT_LIMITS): refuse, with the count, never cut.

The services call `check_text_limit` on what people typed before they write anything; model
fields and form fields carry `TextLimitValidator`, so full_clean() and the forms refuse the same
text with the same words, beside the field.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.utils.deconstruct import deconstructible

from audit.constants import TEXT_LIMITS

ELLIPSIS = "…"


def text_limit_message(limit: str, length: int) -> str:
    """“Keep the reason to 2,000 characters at most (this one has 2,345).”"""
    what = {"plan_reason": "reason", "audit_reason": "reason"}.get(limit, limit).replace("_", " ")
    return f"Keep the {what} to {TEXT_LIMITS[limit]:,} characters at most (this one has {length:,})."


def check_text_limit(field: str, text: str | None, *, limit: str | None = None) -> None:
    """Refuse `text` longer than TEXT_LIMITS[limit or field], as an error on `field`."""
    limit = limit or field
    if text and len(text) > TEXT_LIMITS[limit]:
        raise ValidationError({field: text_limit_message(limit, len(text))}, code="text_limit")


def shortened(text: str, length: int) -> str:
    """Text built by code (a summary, a label snapshot) cut to `length` with a visible “…”."""
    return text if len(text) <= length else text[: length - 1] + ELLIPSIS


@deconstructible
class TextLimitValidator:
    """For model and form fields: the same limit and message as the services."""

    code = "text_limit"

    def __init__(self, limit: str) -> None:
        if limit not in TEXT_LIMITS:
            raise ValueError(f"No text limit named {limit!r}.")
        self.limit = limit

    def __call__(self, value: str) -> None:
        if value and len(value) > TEXT_LIMITS[self.limit]:
            raise ValidationError(text_limit_message(self.limit, len(value)), code=self.code)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextLimitValidator) and other.limit == self.limit

    def __hash__(self) -> int:
        return hash(self.limit)
