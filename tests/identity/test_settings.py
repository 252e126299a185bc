"""Single sign-on's settings, loaded in fresh interpreters (as tests/site/test_settings.py)."""

from __future__ import annotations

from tests.site.test_settings import _load_settings

EXPRESSION = "repr((s.OIDC_ISSUER, s.OIDC_RP_CLIENT_ID, s.OIDC_RP_SCOPES, s.OIDC_GROUPS_CLAIM, s.LOCAL_PASSWORDS))"


def test_settings__no_issuer__sso_off_local_passwords_on() -> None:
    result = _load_settings({"DEBUG": "1", "OIDC_ISSUER": ""}, EXPRESSION)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "('', '', 'openid email profile groups', 'groups', True)"


def test_settings__issuer_from_environment__trailing_slash_dropped() -> None:
    result = _load_settings({"DEBUG": "1", "OIDC_ISSUER": "https://idp.example.com/", "OIDC_CLIENT_ID": "console",
                             "OIDC_CLIENT_SECRET": "s", "OIDC_GROUPS_CLAIM": "roles", "LOCAL_PASSWORDS": "0"},
                            EXPRESSION)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "('https://idp.example.com', 'console', 'openid email profile groups', 'roles', False)"


def test_settings__issuer_without_client__refuse_to_start() -> None:
    result = _load_settings({"DEBUG": "1", "OIDC_ISSUER": "https://idp.example.com"}, "s.OIDC_ISSUER")
    assert result.returncode != 0 and "OIDC_CLIENT_ID and OIDC_CLIENT_SECRET must be set" in result.stderr


def test_settings__scopes_without_openid__refuse_to_start() -> None:
    result = _load_settings({"DEBUG": "1", "OIDC_ISSUER": "https://idp.example.com", "OIDC_CLIENT_ID": "c",
                             "OIDC_CLIENT_SECRET": "s", "OIDC_SCOPES": "email groups"}, "s.OIDC_ISSUER")
    assert result.returncode != 0 and "OIDC_SCOPES must include openid" in result.stderr
