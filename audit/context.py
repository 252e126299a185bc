"""Per-request (or per-job) metadata that every audit row of one user action shares."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

from audit.validators import shortened


@dataclass(frozen=True)
class AuditContext:
    correlation_id: uuid.UUID = field(default_factory=uuid.uuid4)
    request_ip: str | None = None
    user_agent: str = ""
    # The credential a person or service acted through when it was not a console session
    # (an API token: "API token CI deploy (fo_svc_AbCd…)"); every row of the request names it.
    via: str = ""


_current: ContextVar[AuditContext | None] = ContextVar("audit_context", default=None)


def current_context() -> AuditContext:
    """The context of the running request or job; a fresh one when none was opened, so
    every row still has a correlation id."""
    return _current.get() or AuditContext()


def active_context() -> AuditContext | None:
    """The context a request or job opened, if any (log lines carry its correlation id)."""
    return _current.get()


@contextlib.contextmanager
def audit_context(
    *, request_ip: str | None = None, user_agent: str = ""
) -> Iterator[AuditContext]:
    ctx = AuditContext(request_ip=request_ip, user_agent=shortened(user_agent, 400))
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)



def name_credential(credential: str) -> None:
    """Name the credential (an API token) the running request acts with: every audit row it
    writes says so. The request's own context (AuditContextMiddleware) is restored when the
    request ends, which clears the name."""
    _current.set(replace(current_context(), via=shortened(credential, 120)))
