"""A small OpenID provider served by the test on loopback (discovery, JWKS, token, userinfo,
end_session), for the callback's refusals that a real provider never produces: tokens signed by
another key, expired, for another audience. Its token endpoint checks the PKCE verifier against
the challenge of the authorization request, as a real provider does. The happy path, a group
change and logout also run against the real `oidc-provider` in tests/browser/test_single_sign_on.py."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from identity import provider

CLIENT_ID = "featureops-console"
CLIENT_SECRET = "stub-client-secret-0123456789abcdef"  # noqa: S105 - a test provider's


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class StubProvider:
    def __init__(self) -> None:
        self.key = new_key()
        self.kid = "stub-key-1"
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        self.challenges: dict[str, tuple[str, str]] = {}  # code -> (code_challenge, nonce)
        self.token_requests: list[dict[str, str]] = []
        self.claims: dict[str, Any] = {}  # what the next ID token says beyond the defaults
        self.userinfo: dict[str, Any] = {}
        self.sign_with: tuple[Any, str] | None = None  # (key, kid) instead of the published one
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    # -- what the test drives ------------------------------------------------------------------

    def authorize(self, location: str, code: str = "code-1") -> str:
        """Act as the authorization endpoint for the redirect the console sent (its Location):
        remember the challenge and nonce for `code`, and answer the callback's query string."""
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        assert query["code_challenge_method"] == "S256" and query["response_type"] == "code"
        self.challenges[code] = (query["code_challenge"], query["nonce"])
        return urllib.parse.urlencode({"code": code, "state": query["state"]})

    def id_token(self, nonce: str, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": self.issuer, "sub": "alice-0001", "aud": CLIENT_ID, "iat": now, "exp": now + 300,
                   "nonce": nonce, **self.claims, **claims}
        key, kid = self.sign_with or (self.key, self.kid)
        return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})

    # -- the HTTP side -----------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
                pass

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                path = urllib.parse.urlsplit(self.path).path
                if path == "/.well-known/openid-configuration":
                    self._json(200, {"issuer": stub.issuer, "authorization_endpoint": f"{stub.issuer}/authorize",
                                     "token_endpoint": f"{stub.issuer}/token", "jwks_uri": f"{stub.issuer}/jwks",
                                     "userinfo_endpoint": f"{stub.issuer}/userinfo",
                                     "end_session_endpoint": f"{stub.issuer}/session/end"})
                elif path == "/jwks":
                    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(stub.key.public_key()))
                    self._json(200, {"keys": [{**public, "kid": stub.kid, "alg": "RS256", "use": "sig"}]})
                elif path == "/userinfo":
                    self._json(200, {"sub": "alice-0001", **stub.userinfo})
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                stub.token_requests.append(form)
                if urllib.parse.urlsplit(self.path).path != "/token":
                    return self._json(404, {"error": "not_found"})
                if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                    return self._json(401, {"error": "invalid_client"})
                pending = stub.challenges.pop(form.get("code", ""), None)
                if pending is None:
                    return self._json(400, {"error": "invalid_grant", "error_description": "grant request is invalid"})
                challenge, nonce = pending
                verifier = form.get("code_verifier")
                if not verifier or base64.urlsafe_b64encode(
                        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode() != challenge:
                    return self._json(400, {"error": "invalid_grant", "error_description": "PKCE verification failed"})
                return self._json(200, {"access_token": "stub-access-token", "token_type": "Bearer",
                                        "expires_in": 300, "id_token": stub.id_token(nonce)})

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_idp(settings: Any) -> Iterator[StubProvider]:
    """The stub provider, and the console configured for it (single sign-on on)."""
    stub = StubProvider()
    settings.OIDC_ISSUER = stub.issuer
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_GROUPS_CLAIM = "groups"
    provider.forget_metadata()
    try:
        yield stub
    finally:
        stub.stop()
        provider.forget_metadata()


@pytest.fixture
def begin_sign_in(client: Any, stub_idp: StubProvider) -> Callable[..., str]:
    """Start a sign-in in the test client; answers the callback URL the provider would send the
    browser to (nothing exchanged yet)."""

    def begin(code: str = "code-1", next_url: str = "") -> str:
        response = client.get("/sso/login/" + (f"?next={next_url}" if next_url else ""))
        assert response.status_code == 302 and response["Location"].startswith(f"{stub_idp.issuer}/authorize?")
        return "/sso/callback/?" + stub_idp.authorize(response["Location"], code)

    return begin
