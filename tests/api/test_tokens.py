"""Access tokens: made once and stored hashed, refused when missing, unknown, revoked, expired or
out of scope, rate limited, audited by name; service tokens act as an account of their own."""

from __future__ import annotations

import datetime
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone

from audit.constants import AuditAction
from audit.models import AuditEvent
from flags.constants import Role
from flags.models import AccessToken, Flag, Membership
from flags.permissions import Refused
from flags.services.access_tokens import hash_token, personal_token_create, service_token_create, token_revoke
from tests.api.conftest import ApiClient
from tests.factories import grant, make_project

pytestmark = pytest.mark.django_db
User = get_user_model()
FLAG = "/projects/support-assistant/flags/support_agent_tool_mode"


def _user(username: str) -> object:
    return User.objects.get(username=username)


def test_personal_token__created__stored_only_as_a_hash_and_audited(demo: object) -> None:
    owner = _user("owner")

    token, raw = personal_token_create(user=owner, name="release script", scopes=["read"], actor=owner)

    assert raw.startswith("fo_pat_") and len(raw) > 40
    stored = AccessToken.objects.get(pk=token.pk)
    assert stored.token_hash == hash_token(raw) and raw not in str(AccessToken.objects.filter(pk=token.pk).values())
    assert stored.prefix == raw[:12]
    row = AuditEvent.objects.get(action=AuditAction.ACCESS_TOKEN_CREATED, target_id=str(token.pk))
    assert row.actor_id == owner.pk and raw not in str(row.after)


def test_personal_token__for_someone_else__refused(demo: object) -> None:
    with pytest.raises(Refused):
        personal_token_create(user=_user("owner"), name="x", scopes=["read"], actor=_user("admin"))


@pytest.mark.parametrize("scopes, expires_in, field", [
    ([], 30, "scopes"), (["read", "sudo"], 30, "scopes"), (["read"], -1, "expires_at"), (["read"], 400, "expires_at"),
])
def test_token__bad_settings__refused_by_field_and_nothing_made(demo: object, scopes: list[str], expires_in: int,
                                                                 field: str) -> None:
    owner = _user("owner")
    with pytest.raises(ValidationError) as refused:
        personal_token_create(user=owner, name="x", scopes=scopes, actor=owner,
                              expires_at=timezone.now() + datetime.timedelta(days=expires_in))
    assert field in refused.value.message_dict
    assert not AccessToken.objects.exists()


def test_api__without_a_token__401_problem_with_a_bearer_challenge(demo: object) -> None:
    response = Client().get("/api/v1/projects")

    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["status"] == 401 and response.json()["type"].startswith("urn:featureops:problem:")


def test_api__unknown_token__401(demo: object) -> None:
    assert ApiClient(Client(), "fo_pat_" + "x" * 43).get("/projects").status_code == 401


def test_api__revoked_token__refused_from_the_next_request(demo: object, personal_api: object) -> None:
    api = personal_api("owner")
    assert api.get("/projects").status_code == 200

    token_revoke(token=AccessToken.objects.get(token_hash=hash_token(api.token)), actor=_user("owner"))

    response = api.get("/projects")
    assert response.status_code == 401 and response.json()["code"] == "token_revoked"


def test_api__expired_token__refused(demo: object) -> None:
    owner = _user("owner")
    token, raw = personal_token_create(user=owner, name="x", scopes=["read"], actor=owner,
                                       expires_at=timezone.now() + datetime.timedelta(days=1))
    AccessToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))

    response = ApiClient(Client(), raw).get("/projects")

    assert response.status_code == 401 and response.json()["code"] == "token_expired"


def test_api__read_only_token__writes_nothing_whatever_the_user_may(demo: object, personal_api: object) -> None:
    api = personal_api("owner", scopes=("read",))

    response = api.patch(FLAG, {"name": "Renamed"})

    assert response.status_code == 403 and response.json()["code"] == "insufficient_scope"
    assert Flag.objects.get(key="support_agent_tool_mode").name == "Support agent tool mode"


def test_api__a_write__audited_under_the_person_and_the_token(demo: object, personal_api: object) -> None:
    api = personal_api("owner")

    response = api.patch(FLAG, {"owner_team": "support-platform"})

    assert response.status_code == 200, response.content
    row = AuditEvent.objects.filter(action=AuditAction.FLAG_UPDATED).latest("id")
    token = AccessToken.objects.get(token_hash=hash_token(api.token))
    assert row.actor_id == _user("owner").pk
    assert row.actor_label.endswith(f"via API token owner test ({token.prefix}…)")


def test_api__over_the_rate_limit__429_with_retry_after(demo: object, personal_api: object, settings: object) -> None:
    settings.API_RATE_LIMIT_PER_MINUTE = 3
    api = personal_api("owner")
    for _attempt in range(2):  # the count restarts each minute: try again if one began mid-test
        minute = int(time.time() // 60)
        responses = [api.get("/projects") for _ in range(4)]
        if int(time.time() // 60) == minute:
            break

    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert 1 <= int(responses[3]["Retry-After"]) <= 60 and responses[3].json()["code"] == "rate_limited"


def test_api__last_use__recorded_by_a_task(demo: object, personal_api: object, eager_celery: None) -> None:
    api = personal_api("owner")
    token = AccessToken.objects.get(token_hash=hash_token(api.token))
    assert token.last_used_at is None

    api.get("/projects")

    token.refresh_from_db()
    assert token.last_used_at is not None and timezone.now() - token.last_used_at < datetime.timedelta(minutes=1)


# --- service tokens ---------------------------------------------------------------------------------

def _service(project: object, scopes: list[str], admin: str = "admin") -> tuple[AccessToken, str]:
    return service_token_create(project=project, name="CI deploy", scopes=scopes, actor=_user(admin),
                                expires_at=timezone.now() + datetime.timedelta(days=30))


def test_service_token__acts_as_its_own_account_with_one_role_per_scope(demo: object) -> None:
    token, raw = _service(demo, ["read", "write"])

    account = token.user
    assert raw.startswith("fo_svc_") and account.pk not in (_user("admin").pk,)
    assert not account.has_usable_password()
    assert set(Membership.objects.filter(user=account, project=demo).values_list("role", flat=True)) == {
        Role.VIEWER, Role.EDITOR}
    assert AuditEvent.objects.filter(action=AuditAction.ROLE_GRANTED, project_id=demo.pk).count() >= 2


def test_service_token__made_by_someone_not_admin__refused(demo: object) -> None:
    with pytest.raises(Refused):
        _service(demo, ["read"], admin="owner")
    assert not AccessToken.objects.exists()


def test_service_token__without_an_expiry__refused(demo: object) -> None:
    with pytest.raises(ValidationError) as refused:
        service_token_create(project=demo, name="x", scopes=["read"], actor=_user("admin"), expires_at=None)
    assert "expires_at" in refused.value.message_dict


def test_service_token__sees_only_its_project(demo: object) -> None:
    other = make_project("other")
    grant(other, _user("admin"), Role.ADMIN)
    _, raw = _service(other, ["read", "write"])
    api = ApiClient(Client(), raw)

    assert [p["key"] for p in api.get("/projects").json()] == ["other"]
    assert api.get("/projects/support-assistant/flags").status_code == 404
    assert api.get(FLAG).status_code == 404
    assert api.patch(FLAG, {"name": "x"}).status_code == 404
    assert api.get("/projects/support-assistant/environments").status_code == 404


def test_service_token__revoked__its_account_is_deactivated(demo: object) -> None:
    token, raw = _service(demo, ["approve"])

    token_revoke(token=token, actor=_user("admin"), reason="rotated")

    token.user.refresh_from_db()
    assert not token.user.is_active
    assert ApiClient(Client(), raw).get("/projects").status_code == 401
    row = AuditEvent.objects.get(action=AuditAction.ACCESS_TOKEN_REVOKED, target_id=str(token.pk))
    assert row.reason == "rotated"


def test_service_token__revoked_by_a_non_admin__refused(demo: object) -> None:
    token, _ = _service(demo, ["read"])
    with pytest.raises(Refused):
        token_revoke(token=token, actor=_user("owner"))
    assert AccessToken.objects.get(pk=token.pk).revoked_at is None


# --- the console's pages ------------------------------------------------------------------------------

def test_personal_tokens_page__creates_a_token_shown_once(demo: object, login: object, client: Client) -> None:
    login("owner")

    response = client.post("/account/api-tokens/", {"name": "laptop", "scopes": ["read", "write"], "lifetime": "30"})

    assert response.status_code == 200
    token = AccessToken.objects.get(user__username="owner")
    raw = response.context["raw_token"]
    assert token.token_hash == hash_token(raw) and raw in response.content.decode()
    assert token.scopes == ["read", "write"]
    assert raw not in client.get("/account/api-tokens/").content.decode()


def test_personal_tokens_page__no_scope__error_beside_the_field(demo: object, login: object, client: Client) -> None:
    login("owner")

    response = client.post("/account/api-tokens/", {"name": "laptop", "lifetime": "30"})

    assert response.status_code == 422 and "scopes" in response.context["form"].errors
    assert not AccessToken.objects.exists()


def test_service_tokens_page__admins_only(demo: object, login: object, client: Client) -> None:
    login("owner")
    assert client.get("/p/support-assistant/api-tokens/").status_code == 403

    login("admin")
    response = client.post("/p/support-assistant/api-tokens/", {"name": "CI", "scopes": ["write"], "lifetime": "90"})

    assert response.status_code == 200
    token = AccessToken.objects.get(kind=AccessToken.Kind.SERVICE)
    assert token.project == demo and token.created_by == _user("admin")


def test_service_tokens_page__revoke(demo: object, login: object, client: Client) -> None:
    token, _ = _service(demo, ["read"])
    login("admin")

    client.post(f"/p/support-assistant/api-tokens/{token.pk}/revoke/", {"reason": "leaked"})

    assert AccessToken.objects.get(pk=token.pk).revoked_at is not None


def test_personal_token__revoked_by_someone_else_through_the_page__404(demo: object, login: object,
                                                                        client: Client) -> None:
    owner = _user("owner")
    token, _ = personal_token_create(user=owner, name="x", scopes=["read"], actor=owner)
    login("admin")

    assert client.post(f"/account/api-tokens/{token.pk}/revoke/").status_code == 404
    assert AccessToken.objects.get(pk=token.pk).revoked_at is None
