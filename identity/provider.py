"""The identity provider as configured (settings OIDC_*): whether single sign-on is on, its
endpoints (from the issuer's discovery document, read lazily and kept for
OIDC_DISCOVERY_SECONDS), and the actor its sign-ins write as."""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings

from audit.services import SystemActor

REQUIRED_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri")


class ProviderUnavailable(Exception):
    """The discovery document could not be read, or lacks what a sign-in needs."""


_lock = threading.Lock()
_cache: dict[str, tuple[float, dict[str, Any]]] = {}  # issuer -> (read at, document)


def sso_enabled() -> bool:
    return bool(settings.OIDC_ISSUER)


def issuer() -> str:
    return settings.OIDC_ISSUER


def issuer_host() -> str:
    """The issuer's host (and port): how audit rows and usernames name the provider."""
    return urlsplit(settings.OIDC_ISSUER).netloc or settings.OIDC_ISSUER


def idp_actor() -> SystemActor:
    """Who grants and revokes at a sign-in: the identity provider ("system:oidc:<host>")."""
    return SystemActor(f"oidc:{issuer_host()}")


def metadata() -> dict[str, Any]:
    """The issuer's discovery document (<issuer>/.well-known/openid-configuration)."""
    configured = settings.OIDC_ISSUER
    with _lock:
        cached = _cache.get(configured)
        if cached and time.monotonic() - cached[0] < settings.OIDC_DISCOVERY_SECONDS:
            return cached[1]
    url = f"{configured}/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderUnavailable(f"could not read {url}: {exc}") from exc
    if not isinstance(document, dict):
        raise ProviderUnavailable(f"{url} is not a JSON object")
    # The document must be the issuer's own (OpenID Connect Discovery 1.0, section 4.3).
    if str(document.get("issuer", "")).rstrip("/") != configured:
        raise ProviderUnavailable(f"{url} names issuer {document.get('issuer')!r}, not {configured!r}")
    missing = [name for name in REQUIRED_ENDPOINTS if not document.get(name)]
    if missing:
        raise ProviderUnavailable(f"{url} lacks {', '.join(missing)}")
    with _lock:
        _cache[configured] = (time.monotonic(), document)
    return document


def forget_metadata() -> None:
    """Read the discovery document again at the next sign-in (tests; a provider's key rollover)."""
    with _lock:
        _cache.clear()
