"""Who is calling: an access token in `Authorization: Bearer <token>`, and what it may do.

The token's user becomes `request.user`, so the API asks the same permission rules
(flags.permissions) the console asks; `needs(request, scope)` adds the token's own limit on top
(a read-only token writes nothing whatever its user's roles). Each token has a rate limit per
minute (settings.API_RATE_LIMIT_PER_MINUTE), counted in the shared cache, and its last use is
written by a task at most once a minute, never on the request path. Every audit row the request
writes names the token (audit.context.name_credential).
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer

from api.problems import ApiError
from audit.context import name_credential
from flags.models import AccessToken
from flags.services.access_tokens import token_for

logger = logging.getLogger(__name__)


class TokenAuth(HttpBearer):
    openapi_description = "An access token: a personal token (fo_pat_…) or a project's service token (fo_svc_…)."

    def authenticate(self, request: HttpRequest, token: str) -> AccessToken | None:
        found = token_for(token.strip())
        if found is None:
            return None
        now = timezone.now()
        if not found.usable(now):
            why = "revoked" if found.revoked_at else "expired"
            raise ApiError(401, f"token_{why}", f"This token was {why}. Create a new one in the console.",
                           headers={"WWW-Authenticate": f'Bearer realm="featureops-api", error="invalid_token", '
                                                        f'error_description="token {why}"'})
        if not found.user.is_active:
            raise ApiError(401, "token_inactive", "The account this token acts as is deactivated.")
        _count_request(found)
        _note_use(found, now)
        request.user = found.user
        request.access_token = found  # type: ignore[attr-defined]
        name_credential(f"API token {found.name} ({found.prefix}…)")
        return found


def token_of(request: HttpRequest) -> AccessToken:
    return request.auth  # type: ignore[attr-defined,return-value]


def needs(request: HttpRequest, scope: str) -> None:
    """Refuse a request its token's scopes do not cover (403 `insufficient_scope`)."""
    token = token_of(request)
    if scope not in token.scopes:
        raise ApiError(403, "insufficient_scope", f"This token lacks the “{scope}” scope; its scopes: "
                                                  f"{', '.join(token.scopes)}.")


def _count_request(token: AccessToken) -> None:
    limit = settings.API_RATE_LIMIT_PER_MINUTE
    window = int(time.time() // 60)
    key = f"api-rate:{token.pk}:{window}"
    cache.add(key, 0, timeout=120)
    try:
        used = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=120)
        used = 1
    if used > limit:
        retry = 60 - int(time.time()) % 60
        raise ApiError(429, "rate_limited", f"This token made more than {limit} requests this minute; "
                                            f"retry in {retry} s.", headers={"Retry-After": str(retry)})


def _note_use(token: AccessToken, now: object) -> None:
    if not cache.add(f"api-token-used:{token.pk}", 1, timeout=60):
        return
    from flags.tasks import record_token_use

    try:
        record_token_use.apply_async((token.pk, timezone.now().isoformat()), retry=False)
    except Exception:
        # The broker is away: the last-use time lags, the request does not fail for it.
        logger.warning("Could not queue the last use of API token %s.", token.prefix, exc_info=True)
