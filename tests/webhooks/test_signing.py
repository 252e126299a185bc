"""The signature a receiver checks: HMAC-SHA256 over "timestamp.body" with the secret."""

from __future__ import annotations

import hashlib
import hmac

from webhooks.signing import canonical_body, sign, verify

SECRET = "s3cret-for-tests"
BODY = b'{"data":{"flag":"tool_mode"},"event":"targeting.updated"}'


def test_sign__known_message__hex_hmac_sha256_of_timestamp_dot_body() -> None:
    # Given a secret, a timestamp and a body
    # When signed
    signature = sign(SECRET, "1700000000", BODY)
    # Then it is what any HMAC library computes over "timestamp.body"
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"


def test_verify__untouched_and_recent__accepted() -> None:
    # Given a request signed now
    signature = sign(SECRET, "1700000000", BODY)
    # Then a receiver with the same secret accepts it
    assert verify(SECRET, "1700000000", BODY, signature, now=1700000010)


def test_verify__altered_body_timestamp_or_secret__refused() -> None:
    # Given a signed request
    signature = sign(SECRET, "1700000000", BODY)
    # Then changing any part of it, or the secret, breaks the signature
    assert not verify(SECRET, "1700000000", BODY.replace(b"tool_mode", b"other"), signature, now=1700000000)
    assert not verify(SECRET, "1700000001", BODY, signature, now=1700000000)
    assert not verify("another-secret", "1700000000", BODY, signature, now=1700000000)
    assert not verify(SECRET, "not-a-number", BODY, signature, now=1700000000)


def test_verify__old_timestamp__refused_as_a_replay() -> None:
    # Given a correctly signed request captured an hour ago
    signature = sign(SECRET, "1700000000", BODY)
    # Then it is refused outside the tolerance window
    assert not verify(SECRET, "1700000000", BODY, signature, now=1700003600)


def test_canonical_body__key_order_and_spacing__stable_bytes() -> None:
    assert canonical_body({"b": 1, "a": [1, {"d": 2, "c": "é"}]}) == '{"a":[1,{"c":"é","d":2}],"b":1}'.encode()
