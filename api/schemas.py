"""Shapes shared by every router: the problem body, pages, a change request in brief, the
standard error answers each operation documents, and input types as strict as the document.

Pydantic's lax mode reads more than the OpenAPI document promises: `0` or `"0"` as a date
(1970-01-01), `1` or `"yes"` as true, `"5"` or `5.0` as an integer. A client relying on that
would break on any other implementation of the document. So dates and times, in bodies and
query strings, are `IsoDate` and `IsoDateTime` (text, and not a number); booleans and integers
in bodies are `StrictBool` and `StrictInt` (query parameters arrive as text: they stay lax).
"""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Any

from ninja import Schema
from pydantic import AwareDatetime, BeforeValidator, Field, Strict

_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def _iso_text(value: Any) -> Any:
    if not isinstance(value, str | datetime.date) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("expected ISO 8601 text, such as 2026-12-31 or 2026-12-31T09:30:00Z")
    return value


IsoDate = Annotated[datetime.date, BeforeValidator(_iso_text)]
IsoDateTime = Annotated[datetime.datetime, BeforeValidator(_iso_text)]
IsoAwareDateTime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]  # with its zone
StrictBool = Annotated[bool, Strict()]
StrictInt = Annotated[int, Strict()]


class FieldProblem(Schema):
    path: str
    message: str


class Problem(Schema):
    """RFC 9457 problem details (served as application/problem+json)."""

    type: str = Field(examples=["urn:featureops:problem:invalid"])
    title: str
    status: int
    detail: str
    code: str
    instance: str
    errors: list[FieldProblem] = Field(default_factory=list)


class ChangeRequestBrief(Schema):
    """A change request, as a write answers with it (202) or a list shows it."""

    id: int
    kind: str
    status: str
    project: str
    flag: str | None
    segment: str | None
    environment: str | None
    requester: str
    reason: str
    reasons: list[dict[str, Any]]
    escalation: bool
    required_approvals: int
    approvals: int
    version: str = Field(description="The version approvals bind to (the diff hash); changes when the request is edited.")
    scheduled_for: datetime.datetime | None
    created_at: datetime.datetime
    url: str


# Every operation may answer these; writes add 409/412 where they say so.
ERRORS: dict[int, type[Schema]] = {400: Problem, 401: Problem, 403: Problem, 404: Problem, 422: Problem,
                                    429: Problem}
WRITE_ERRORS: dict[int, type[Schema]] = {**ERRORS, 409: Problem, 412: Problem}


def answers(ok: dict[int, Any], *, write: bool = False) -> dict[int, Any]:
    return {**ok, **(WRITE_ERRORS if write else ERRORS)}
