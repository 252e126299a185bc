"""Shapes shared by every router: the problem body, pages, a change request in brief, and
the standard error answers each operation documents."""

from __future__ import annotations

import datetime
from typing import Any

from ninja import Schema
from pydantic import Field


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
