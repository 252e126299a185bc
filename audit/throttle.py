"""Throttling repeated failed sign-ins, per account and per address, in the shared cache."""

from __future__ import annotations

import hashlib
import unicodedata

from django.conf import settings
from django.core.cache import cache


def _account(username: str) -> str:
    """The account as authentication sees it (NFKC, as Django's UsernameField normalises),
    so compatibility spellings of a name share one counter."""
    normal = unicodedata.normalize("NFKC", username).casefold()
    return hashlib.sha256(normal.encode("utf-8", "surrogatepass")).hexdigest()


def _keys(username: str, address: str | None) -> list[tuple[str, int]]:
    keys = [(f"login-failures:user:{_account(username)}", settings.LOGIN_FAILURES_PER_ACCOUNT)]
    if address:
        keys.append((f"login-failures:ip:{address}", settings.LOGIN_FAILURES_PER_ADDRESS))
    return keys


def is_throttled(username: str, address: str | None) -> bool:
    return any((cache.get(key) or 0) >= limit for key, limit in _keys(username, address))


def note_failure(username: str, address: str | None) -> None:
    for key, _ in _keys(username, address):
        if cache.add(key, 1, settings.LOGIN_THROTTLE_SECONDS):
            continue
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, settings.LOGIN_THROTTLE_SECONDS)


def clear_account(username: str) -> None:
    cache.delete(f"login-failures:user:{_account(username)}")
