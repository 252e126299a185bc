"""The sign-in callback against a provider whose answers the test decides (tests/identity/conftest.py):
accounts and roles on success, and every refusal a clear page with no sign-in and no 500."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import pytest
from django.contrib.auth import SESSION_KEY, get_user_model

from audit.models import AuditEvent
from flags import services
from flags.constants import Role
from flags.models import Membership
from identity import services as identity_services
from identity.models import IdpGrant, OidcIdentity
from tests.factories import TEST_ACTOR, make_project
from tests.identity.conftest import CLIENT_ID, new_key

pytestmark = pytest.mark.django_db


def _signed_in(client: Any) -> bool:
    return SESSION_KEY in client.session


def _refusal(response: Any) -> str:
    assert response.status_code in (400, 403, 502), response.status_code
    assert response.templates[0].name == "identity/sign_in_failed.html"
    return response.context["reason"]


def test_sign_in__new_person__account_from_sub_and_exactly_the_mapped_roles(client, stub_idp, begin_sign_in) -> None:
    # Given rules in two projects, and a person in two mapped groups and one unmapped
    support, other = make_project("support"), make_project("other")
    identity_services.group_rule_create(project=support, group="support-ai-approvers", role=Role.APPROVER,
                                        actor=TEST_ACTOR)
    identity_services.group_rule_create(project=support, group="support-ai-operators", role=Role.OPERATOR,
                                        actor=TEST_ACTOR)
    identity_services.group_rule_create(project=other, group="other-editors", role=Role.EDITOR, actor=TEST_ACTOR)
    stub_idp.userinfo = {"name": "Alice Example", "email": "alice@example.com", "email_verified": True,
                         "groups": ["support-ai-approvers", "other-editors", "unmapped"]}

    # When she signs in
    response = client.get(begin_sign_in(next_url="/p/support/"))

    # Then she is signed in as a new account named by sub@issuer host, with her name and email
    assert response.status_code == 302 and response["Location"] == "/p/support/"
    identity = OidcIdentity.objects.get(issuer=stub_idp.issuer, subject="alice-0001")
    user = identity.user
    host = urllib.parse.urlsplit(stub_idp.issuer).netloc
    assert user.username == f"alice-0001@{host.replace(':', '_')}"
    assert (user.get_full_name(), user.email, user.has_usable_password()) == ("Alice Example", "alice@example.com",
                                                                               False)
    assert client.session[SESSION_KEY] == str(user.pk)
    # ...with exactly the roles her groups map to, each remembered as the provider's grant
    held = set(Membership.objects.filter(user=user).values_list("project__key", "role"))
    assert held == {("support", Role.APPROVER), ("other", Role.EDITOR)}
    assert IdpGrant.objects.filter(membership__user=user).count() == 2
    # ...and the trail shows the identity provider as the actor of the account and the grants
    actor = f"system:oidc:{host}"
    assert AuditEvent.objects.get(action="user.created", target_id=str(user.pk)).actor_label == actor
    grants = AuditEvent.objects.filter(action="role.granted", target_label__startswith=user.username)
    assert sorted((e.actor_label, e.actor_kind, e.project_label) for e in grants) == [
        (actor, "system", "Other"), (actor, "system", "Support")]
    # ...and the code was exchanged with the PKCE verifier of the challenge the console sent
    (token_request,) = stub_idp.token_requests
    assert token_request["grant_type"] == "authorization_code" and token_request["code_verifier"]


def test_sign_in__again_with_changed_groups_and_name__role_revoked_by_idp_hand_grant_kept(
        client, stub_idp, begin_sign_in) -> None:
    support = make_project("support")
    identity_services.group_rule_create(project=support, group="approvers", role=Role.APPROVER, actor=TEST_ACTOR)
    identity_services.group_rule_create(project=support, group="viewers", role=Role.VIEWER, actor=TEST_ACTOR)
    stub_idp.userinfo = {"name": "Alice Example", "email": "alice@example.com", "groups": ["approvers"]}
    client.get(begin_sign_in())
    user = OidcIdentity.objects.get(subject="alice-0001").user
    # An admin also grants her operator by hand
    services.membership_grant(project=support, user=user, role=Role.OPERATOR, actor=TEST_ACTOR)
    client.logout()

    # When she signs in again, now only in "viewers", with a new name and email
    stub_idp.userinfo = {"name": "Alice Renamed", "email": "alice@new.example.com", "groups": ["viewers"]}
    client.get(begin_sign_in(code="code-2"))

    # Then approver is revoked by the identity provider, viewer granted, operator (by hand) kept
    assert set(Membership.objects.filter(user=user).values_list("role", flat=True)) == {Role.VIEWER, Role.OPERATOR}
    revoked = AuditEvent.objects.get(action="role.revoked")
    host = urllib.parse.urlsplit(stub_idp.issuer).netloc
    assert revoked.actor_label == f"system:oidc:{host}" and revoked.before == {"user": user.username,
                                                                               "role": "approver"}
    assert "approvers" in revoked.reason
    user.refresh_from_db()
    assert (user.get_full_name(), user.email) == ("Alice Renamed", "alice@new.example.com")
    updated = AuditEvent.objects.get(action="user.updated", target_id=str(user.pk))
    assert updated.before == {"email": "alice@example.com", "last_name": "Example"}
    assert updated.after == {"email": "alice@new.example.com", "last_name": "Renamed"}
    # ...and one account only: the link is (issuer, sub)
    assert OidcIdentity.objects.count() == 1 and get_user_model().objects.filter(username__startswith="alice").count() == 1


def test_sign_in__local_account_with_the_same_username__not_taken_over(client, stub_idp, begin_sign_in,
                                                                       django_user_model) -> None:
    host = urllib.parse.urlsplit(stub_idp.issuer).netloc.replace(":", "_")
    local = django_user_model.objects.create_user(f"alice-0001@{host}", email="alice@example.com", password="x")
    stub_idp.userinfo = {"email": "alice@example.com"}

    client.get(begin_sign_in())

    user = OidcIdentity.objects.get(subject="alice-0001").user
    assert user.pk != local.pk and user.username == f"alice-0001@{host}-2"
    assert client.session[SESSION_KEY] == str(user.pk)


def test_sign_in__unverified_email__not_stored(client, stub_idp, begin_sign_in) -> None:
    stub_idp.userinfo = {"email": "ceo@example.com", "email_verified": False}
    client.get(begin_sign_in())
    assert OidcIdentity.objects.get(subject="alice-0001").user.email == ""


@pytest.mark.parametrize(("claims", "expected"), [
    ({"aud": "another-application"}, "issued for another application"),
    ({"aud": [CLIENT_ID, "another-application"], "azp": "another-application"}, "issued for another application"),
    ({"exp": int(time.time()) - 600, "iat": int(time.time()) - 900}, "has expired"),
    ({"iss": "https://elsewhere.example.com"}, "issued by another identity provider"),
    ({"nonce": "not-the-one-sent"}, "nonce differs"),
])
def test_callback__id_token_claims_wrong__refused_with_reason_no_sign_in(client, stub_idp, begin_sign_in,
                                                                         claims, expected) -> None:
    stub_idp.claims = claims
    response = client.get(begin_sign_in())
    assert expected in _refusal(response)
    assert not _signed_in(client)
    assert not get_user_model().objects.exists()
    refused = AuditEvent.objects.get(action="auth.login_failed")
    assert expected in refused.summary


@pytest.mark.parametrize(("kid", "expected"), [("stub-key-1", "signature does not verify"),
                                                ("another-key", "a key the identity provider does not publish")])
def test_callback__id_token_signed_by_another_key__refused(client, stub_idp, begin_sign_in, kid, expected) -> None:
    # A forger's key: under the provider's key id, or under one the provider does not publish
    stub_idp.sign_with = (new_key(), kid)
    response = client.get(begin_sign_in())
    assert expected in _refusal(response)
    assert not _signed_in(client) and not get_user_model().objects.exists()


def test_callback__same_url_twice__second_refused_and_code_not_exchanged_again(client, stub_idp,
                                                                               begin_sign_in) -> None:
    callback = begin_sign_in()
    assert client.get(callback).status_code == 302
    client.logout()

    response = client.get(callback)

    assert "already used" in _refusal(response)
    assert not _signed_in(client)
    assert len(stub_idp.token_requests) == 1


def test_callback__in_another_browser__refused(client, stub_idp, begin_sign_in, django_user_model) -> None:
    from django.test import Client

    callback = begin_sign_in()
    response = Client().get(callback)
    assert "started in another browser" in _refusal(response)
    assert stub_idp.token_requests == []


def test_callback__verifier_missing_from_the_token_request__provider_refuses_clear_page(client, stub_idp,
                                                                                       begin_sign_in) -> None:
    callback = begin_sign_in()
    session = client.session
    state = urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query)["state"][0]
    session["oidc_states"][state]["code_verifier"] = None
    session.save()

    response = client.get(callback)

    assert "refused to issue tokens: invalid_grant (PKCE verification failed)" in _refusal(response)
    assert "code_verifier" not in stub_idp.token_requests[0]
    assert not _signed_in(client) and not get_user_model().objects.exists()


def test_callback__wrong_verifier__provider_refuses(client, stub_idp, begin_sign_in) -> None:
    callback = begin_sign_in()
    session = client.session
    state = urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query)["state"][0]
    session["oidc_states"][state]["code_verifier"] = "x" * 64
    session.save()
    response = client.get(callback)
    assert "PKCE verification failed" in _refusal(response)
    assert not _signed_in(client)


def test_callback__provider_error_access_denied__clear_page_and_state_spent(client, stub_idp, begin_sign_in) -> None:
    callback = begin_sign_in()
    state = urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query)["state"][0]

    response = client.get("/sso/callback/?" + urllib.parse.urlencode(
        {"error": "access_denied", "error_description": "The user said no", "state": state}))

    assert "declined at the identity provider" in _refusal(response)
    assert "The user said no" in response.content.decode()
    assert "already used" in _refusal(client.get(callback))  # the state died with the error
    assert stub_idp.token_requests == []


@pytest.mark.parametrize("query", ["", "state=made-up&code=abc", "code=abc", "error=%3Cscript%3E"])
def test_callback__junk__clear_page_never_500(client, stub_idp, query) -> None:
    response = client.get(f"/sso/callback/?{query}")
    _refusal(response)
    assert b"<script>" not in response.content


def test_callback__answer_naming_another_issuer__refused(client, stub_idp, begin_sign_in) -> None:
    response = client.get(begin_sign_in() + "&iss=https%3A%2F%2Fevil.example.com")
    assert "another identity provider" in _refusal(response)
    assert stub_idp.token_requests == []


def test_sign_in__provider_down__clear_page_502(client, settings, stub_idp) -> None:
    stub_idp.stop()
    response = client.get("/sso/login/")
    assert response.status_code == 502 and "cannot be reached" in _refusal(response)


def test_sign_in__deactivated_account__refused(client, stub_idp, begin_sign_in) -> None:
    client.get(begin_sign_in())
    user = OidcIdentity.objects.get(subject="alice-0001").user
    client.logout()
    user.is_active = False
    user.save()

    response = client.get(begin_sign_in(code="code-2"))

    assert response.status_code == 403 and "deactivated" in _refusal(response)
    assert not _signed_in(client)


def test_sign_in__not_configured__404(client, settings) -> None:
    settings.OIDC_ISSUER = ""
    assert client.get("/sso/login/").status_code == 404
    assert client.get("/sso/callback/?code=a&state=b").status_code == 404


def test_logout__sso_session__ends_the_provider_session_too(client, stub_idp, begin_sign_in) -> None:
    client.get(begin_sign_in())
    id_token = client.session["oidc_id_token"]

    response = client.post("/logout/")

    # a page that moves on to the provider by itself (a redirect would break the CSP's form-action)
    assert response.status_code == 200
    assert f'http-equiv="refresh" content="0;url={response.context["end_session_url"]}"'.replace(
        "&", "&amp;") in response.content.decode()
    location = urllib.parse.urlsplit(response.context["end_session_url"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{stub_idp.issuer}/session/end"
    query = dict(urllib.parse.parse_qsl(location.query))
    assert query == {"id_token_hint": id_token, "client_id": CLIENT_ID,
                     "post_logout_redirect_uri": "http://testserver/login/"}
    assert not _signed_in(client)
    assert AuditEvent.objects.filter(action="auth.logout").count() == 1


def test_logout__password_session__to_the_login_page(client, django_user_model, stub_idp) -> None:
    client.force_login(django_user_model.objects.create_user("local", password="x"))
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert not _signed_in(client)
    assert client.get("/logout/").status_code == 405

