"""Throttling failed sign-ins, in the cache every process shares (settings.CACHES).

Two limits; neither lets failures from one address lock an account for everyone else:
- per (account, address): after LOGIN_FAILURES_PER_ACCOUNT failures, each further try from that
  address must wait LOGIN_DELAY_BASE_SECONDS after the last failure, doubled for every failure
  since, up to LOGIN_DELAY_MAX_SECONDS. A successful sign-in forgets the pair; so does
  LOGIN_THROTTLE_SECONDS without failures once the wait is over.
- per address: at most LOGIN_FAILURES_PER_ADDRESS failures, for any accounts, in a window of
  LOGIN_THROTTLE_SECONDS from the first.

An IPv6 client usually holds a whole /64, so a /64 counts as one address.

Counting reads, then writes (the database cache has no atomic increment): failures that land at
the same instant may count once. Tries are checked before they are counted, so a burst of
simultaneous tries passes the check together whatever the backend; the limits bound guessing
one try after another.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
import unicodedata
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache


@dataclass(frozen=True)
class Refusal:
    """A sign-in refused without checking the password."""

    retry_after: int  # seconds until a try may be made, at least 1
    per_address: bool  # the address's limit, rather than this account's from this address


def _now() -> float:
    return time.time()


def _account(username: str) -> str:
    """The account as authentication sees it (NFKC, as Django's UsernameField normalises), so
    compatibility spellings of a name share one state."""
    return unicodedata.normalize("NFKC", username).casefold()


def _address(address: str | None) -> str:
    if not address:
        return "-"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _pair_key(username: str, address: str | None) -> str:
    pair = f"{_account(username)}\0{_address(address)}".encode("utf-8", "surrogatepass")
    return f"login-failures:pair:{hashlib.sha256(pair).hexdigest()}"


def _address_key(address: str) -> str:
    return f"login-failures:address:{_address(address)}"


def _delay(failures: int) -> float:
    """How long the try after the last of `failures` failures of one pair must wait."""
    beyond = failures - settings.LOGIN_FAILURES_PER_ACCOUNT
    if beyond < 0:
        return 0.0
    return min(float(settings.LOGIN_DELAY_MAX_SECONDS), settings.LOGIN_DELAY_BASE_SECONDS * 2.0 ** min(beyond, 60))


def refusal(username: str, address: str | None) -> Refusal | None:
    """Whether a sign-in as `username` from `address` must be refused now, and for how long."""
    now = _now()
    keys = [_pair_key(username, address)] + ([_address_key(address)] if address else [])
    states = cache.get_many(keys)
    waits: list[tuple[float, bool]] = []
    if pair := states.get(keys[0]):
        failures, last_failure = pair
        waits.append((last_failure + _delay(failures) - now, False))
    if address and (per_address := states.get(keys[1])):
        failures, since = per_address
        if failures >= settings.LOGIN_FAILURES_PER_ADDRESS:
            waits.append((since + settings.LOGIN_THROTTLE_SECONDS - now, True))
    wait, per_address_limit = max(waits, default=(0.0, False))
    if wait <= 0:
        return None
    return Refusal(retry_after=max(1, math.ceil(wait)), per_address=per_address_limit)


def note_failure(username: str, address: str | None) -> None:
    now = _now()
    window = settings.LOGIN_THROTTLE_SECONDS
    key = _pair_key(username, address)
    failures, last_failure = cache.get(key) or (0, now)
    if last_failure + _delay(failures) + window <= now:
        failures = 0  # forgotten, though the cache has not dropped it yet
    failures += 1
    cache.set(key, (failures, now), timeout=math.ceil(_delay(failures) + window))
    if address:
        key = _address_key(address)
        failures, since = cache.get(key) or (0, now)
        if since + window <= now:
            failures, since = 0, now
        cache.set(key, (failures + 1, since), timeout=max(1, math.ceil(since + window - now)))


def note_success(username: str, address: str | None) -> None:
    """A successful sign-in forgets that account's failures from that address (not the address's
    own count: signing in to one's own account must not reset guessing at others)."""
    cache.delete(_pair_key(username, address))
