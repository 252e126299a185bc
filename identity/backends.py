"""The authentication backend of single sign-on: mozilla-django-oidc's, with the endpoints from
the issuer's discovery document, a stricter ID token check, and accounts and roles written by
identity.services.

The library exchanges the code (with the PKCE verifier the callback found in the session) and
fetches userinfo. Its own ID token check verifies the signature only; this one also requires and
checks the issuer, the audience (and `azp` when there are several), the expiry and issue time
(OIDC_CLOCK_SKEW_SECONDS of leeway) and the nonce. Anything refused raises SignInRefused, which the
callback view turns into a page that says why.
"""

from __future__ import annotations

from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from identity import provider
from identity.services import SignInRefused, oidc_account_sign_in

REQUIRED_ID_TOKEN_CLAIMS = ["iss", "sub", "aud", "exp", "iat"]


class OidcBackend(OIDCAuthenticationBackend):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Built for every request that loads a signed-in user: read no endpoint here (the
        # library's __init__ insists on them); they come from discovery when a sign-in runs.
        self.UserModel = get_user_model()
        self.OIDC_RP_CLIENT_ID = settings.OIDC_RP_CLIENT_ID
        self.OIDC_RP_CLIENT_SECRET = settings.OIDC_RP_CLIENT_SECRET
        self.OIDC_RP_SIGN_ALGO = settings.OIDC_RP_SIGN_ALGO
        self.OIDC_RP_IDP_SIGN_KEY = None
        self.OIDC_OP_TOKEN_ENDPOINT = self.OIDC_OP_USER_ENDPOINT = self.OIDC_OP_JWKS_ENDPOINT = ""

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> AbstractBaseUser | None:
        # Only the callback's call (it passes the nonce): never a password sign-in.
        if request is None or "nonce" not in kwargs or not provider.sso_enabled():
            return None
        document = provider.metadata()
        self.OIDC_OP_TOKEN_ENDPOINT = document["token_endpoint"]
        self.OIDC_OP_JWKS_ENDPOINT = document["jwks_uri"]
        self.OIDC_OP_USER_ENDPOINT = document.get("userinfo_endpoint", "")
        return super().authenticate(request, **kwargs)

    def get_token(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return super().get_token(payload)
        except requests.HTTPError as exc:
            raise SignInRefused(f"The identity provider refused to issue tokens: {_oauth_error(exc.response)}.") from exc

    def verify_token(self, token: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(token, str) or not token:
            raise SignInRefused("The identity provider sent no ID token.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise SignInRefused("The ID token could not be read.") from exc
        if header.get("alg") != self.OIDC_RP_SIGN_ALGO:
            raise SignInRefused(f"The ID token is signed with {header.get('alg')!r}, not {self.OIDC_RP_SIGN_ALGO}.")
        try:
            key = self.retrieve_matching_jwk(token)
        except (SuspiciousOperation, KeyError, jwt.PyJWKError) as exc:
            raise SignInRefused("The ID token is signed with a key the identity provider does not publish.") from exc
        try:
            payload = jwt.decode(token, key, algorithms=[self.OIDC_RP_SIGN_ALGO], audience=self.OIDC_RP_CLIENT_ID,
                                 issuer=provider.issuer(), leeway=settings.OIDC_CLOCK_SKEW_SECONDS,
                                 options={"require": REQUIRED_ID_TOKEN_CLAIMS})
        except jwt.InvalidSignatureError as exc:
            raise SignInRefused("The ID token's signature does not verify: it was not signed by the identity "
                                "provider.") from exc
        except jwt.ExpiredSignatureError as exc:
            raise SignInRefused("The ID token has expired.") from exc
        except jwt.InvalidAudienceError as exc:
            raise SignInRefused("The ID token was issued for another application, not this console.") from exc
        except jwt.InvalidIssuerError as exc:
            raise SignInRefused("The ID token was issued by another identity provider.") from exc
        except jwt.ImmatureSignatureError as exc:
            raise SignInRefused("The ID token is not valid yet (check the clocks).") from exc
        except jwt.InvalidTokenError as exc:
            raise SignInRefused(f"The ID token is not valid: {exc}.") from exc
        audiences = payload["aud"] if isinstance(payload["aud"], list) else [payload["aud"]]
        if len(audiences) > 1 and payload.get("azp") != self.OIDC_RP_CLIENT_ID:
            raise SignInRefused("The ID token was issued for another application, not this console.")
        if kwargs.get("nonce") is None or payload.get("nonce") != kwargs["nonce"]:
            raise SignInRefused("The ID token does not answer this sign-in (its nonce differs).")
        return payload

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> dict[str, Any]:
        if not self.OIDC_OP_USER_ENDPOINT:
            return {}
        try:
            return super().get_userinfo(access_token, id_token, payload)
        except (requests.RequestException, ValueError) as exc:
            raise SignInRefused("The identity provider did not say who you are (its userinfo endpoint failed).") from exc

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> AbstractBaseUser:
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if not isinstance(userinfo, dict):
            raise SignInRefused("The identity provider's userinfo answer is not a JSON object.")
        if userinfo and userinfo.get("sub") != payload["sub"]:
            raise SignInRefused("The identity provider's userinfo is about someone else than the ID token.")
        # The ID token's claims win: they are signed.
        claims = {**userinfo, **payload}
        user, _ = oidc_account_sign_in(issuer=provider.issuer(), host=provider.issuer_host(), claims=claims,
                                       actor=provider.idp_actor())
        return user


def _oauth_error(response: requests.Response | None) -> str:
    """The token endpoint's error (RFC 6749 5.2), e.g. "invalid_grant (PKCE verification failed)"."""
    if response is None:
        return "no answer"
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    error = str(body.get("error", f"HTTP {response.status_code}"))[:100]
    description = str(body.get("error_description", ""))[:300]
    return f"{error} ({description})" if description else error
