"""The sign-in page with local passwords on and off, the project's sign-in rules page, and
signing a member out everywhere."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import SESSION_KEY
from django.test import Client

from audit.models import AuditEvent
from flags import services
from flags.constants import Role
from identity import services as identity
from identity.models import GroupRoleRule
from tests.factories import TEST_ACTOR, make_project

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_of(make_user) -> Any:
    def make(project: Any, username: str = "boss") -> Any:
        user = make_user(username)
        services.membership_grant(project=project, user=user, role=Role.ADMIN, actor=TEST_ACTOR)
        return user
    return make


# --- local passwords ---------------------------------------------------------------------------


def test_login_page__passwords_on_and_sso_on__both_ways(client, settings) -> None:
    settings.OIDC_ISSUER, settings.OIDC_PROVIDER_NAME = "https://idp.example.com", "Example SSO"
    page = client.get("/login/?next=/p/x/").content.decode()
    assert 'name="password"' in page and "Sign in with Example SSO" in page
    assert 'href="/sso/login/?next=%2Fp%2Fx%2F"' in page


def test_login_page__passwords_off__no_form_and_a_posted_password_refused(client, settings, django_user_model) -> None:
    settings.LOCAL_PASSWORDS = False
    settings.OIDC_ISSUER = "https://idp.example.com"
    django_user_model.objects.create_user("pm", password="right-password")

    page = client.get("/login/").content.decode()
    assert 'name="password"' not in page and "Sign in with" in page

    response = client.post("/login/", {"username": "pm", "password": "right-password"})
    assert response.status_code == 403 and "turned off" in response.content.decode()
    assert SESSION_KEY not in client.session
    # and the backend itself checks no password, whoever asks
    from django.contrib.auth import authenticate
    assert authenticate(username="pm", password="right-password") is None


def test_admin_login__passwords_off__post_refused_get_sent_to_sign_in(client, settings, django_user_model) -> None:
    settings.LOCAL_PASSWORDS = False
    django_user_model.objects.create_superuser("root", password="right-password")

    response = client.post("/admin/login/", {"username": "root", "password": "right-password"})
    assert response.status_code == 403 and SESSION_KEY not in client.session

    response = client.get("/admin/login/?next=/admin/")
    assert response.status_code == 302 and response["Location"] == "/login/?next=%2Fadmin%2F"


def test_admin_login__passwords_on__works_as_before(client, django_user_model) -> None:
    django_user_model.objects.create_superuser("root", password="right-password")
    response = client.post("/admin/login/?next=/admin/", {"username": "root", "password": "right-password",
                                                          "next": "/admin/"})
    assert response.status_code == 302 and client.session[SESSION_KEY]


def test_admin_login__passwords_off_staff_signed_in__to_the_admin(client, settings, django_user_model) -> None:
    settings.LOCAL_PASSWORDS = False
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    assert client.get("/admin/login/").status_code == 302
    client.force_login(django_user_model.objects.create_user("plain"))
    assert client.get("/admin/login/").status_code == 403


# --- sign-in role rules page -------------------------------------------------------------------


def test_rules_page__admin_adds_edits_deletes_a_rule(client, admin_of) -> None:
    project = make_project("support")
    client.force_login(admin_of(project))

    response = client.post("/p/support/sign-in/rules/", {"group": "support-ai-approvers", "role": "approver"})
    assert response.status_code == 302
    rule = GroupRoleRule.objects.get()
    page = client.get("/p/support/sign-in/").content.decode()
    assert 'value="support-ai-approvers"' in page

    response = client.post(f"/p/support/sign-in/rules/{rule.pk}/", {f"rule-{rule.pk}-group": "support-ai-leads",
                                                                   f"rule-{rule.pk}-role": "editor"})
    assert response.status_code == 302
    rule.refresh_from_db()
    assert (rule.group, rule.role) == ("support-ai-leads", "editor")

    assert client.post(f"/p/support/sign-in/rules/{rule.pk}/delete/").status_code == 302
    assert not GroupRoleRule.objects.exists()
    assert list(AuditEvent.objects.filter(action__startswith="sso_rule").order_by("id").values_list("action", flat=True)
                ) == ["sso_rule.created", "sso_rule.updated", "sso_rule.deleted"]


def test_rules_page__blank_group__error_beside_the_field_nothing_written(client, admin_of) -> None:
    client.force_login(admin_of(make_project("support")))
    response = client.post("/p/support/sign-in/rules/", {"group": "  ", "role": "approver"})
    assert response.status_code == 422
    assert response.context["form"].errors["group"] == ["This field is required."]
    assert not GroupRoleRule.objects.exists()
    response = client.post("/p/support/sign-in/rules/", {"group": "g", "role": "owner"})
    assert response.status_code == 422 and "role" in response.context["form"].errors


def test_rules_page__duplicate_on_edit__error_beside_that_rule(client, admin_of) -> None:
    project = make_project("support")
    client.force_login(admin_of(project))
    identity.group_rule_create(project=project, group="a", role=Role.VIEWER, actor=TEST_ACTOR)
    other = identity.group_rule_create(project=project, group="b", role=Role.VIEWER, actor=TEST_ACTOR)
    response = client.post(f"/p/support/sign-in/rules/{other.pk}/", {f"rule-{other.pk}-group": "a",
                                                                    f"rule-{other.pk}-role": "viewer"})
    assert response.status_code == 422 and "already grants Viewer" in response.content.decode()
    other.refresh_from_db()
    assert other.group == "b"


def test_rules_page__another_projects_rule__404(client, admin_of) -> None:
    mine, theirs = make_project("mine"), make_project("theirs")
    client.force_login(admin_of(mine))
    their_rule = identity.group_rule_create(project=theirs, group="g", role=Role.VIEWER, actor=TEST_ACTOR)
    assert client.post(f"/p/mine/sign-in/rules/{their_rule.pk}/delete/").status_code == 404
    assert GroupRoleRule.objects.filter(pk=their_rule.pk).exists()


def test_rules_page__queries_do_not_grow_with_rows(client, admin_of, make_user, django_assert_max_num_queries) -> None:
    project = make_project("support")
    client.force_login(admin_of(project))
    for n in range(12):
        identity.group_rule_create(project=project, group=f"group-{n}", role=Role.VIEWER, actor=TEST_ACTOR)
        services.membership_grant(project=project, user=make_user(f"member{n}"), role=Role.VIEWER, actor=TEST_ACTOR)
    with django_assert_max_num_queries(14):
        assert client.get("/p/support/sign-in/").status_code == 200


def test_all_rules__staff_only(client, make_user) -> None:
    project = make_project("support")
    identity.group_rule_create(project=project, group="support-ai-approvers", role=Role.APPROVER, actor=TEST_ACTOR)
    client.force_login(make_user("plain"))
    assert client.get("/sso/rules/").status_code == 403
    client.force_login(make_user("staffer", is_staff=True))
    response = client.get("/sso/rules/")
    assert response.status_code == 200 and "support-ai-approvers" in response.content.decode()


# --- sessions ----------------------------------------------------------------------------------


def test_sessions_revoke__member_signed_out_at_once_and_audited(client, admin_of, make_user) -> None:
    project = make_project("support")
    member = make_user("alice")
    services.membership_grant(project=project, user=member, role=Role.VIEWER, actor=TEST_ACTOR)
    browser = Client()
    browser.force_login(member)
    assert browser.get("/p/support/").status_code == 200
    client.force_login(admin_of(project))

    response = client.post("/p/support/sign-in/sessions/revoke/", {"user": member.pk})

    assert response.status_code == 302
    assert browser.get("/p/support/").status_code == 302  # to the sign-in page
    event = AuditEvent.objects.get(action="user.sessions_revoked")
    assert event.project_id == project.pk and event.after["sessions_ended"] == 1


def test_sessions_revoke__someone_of_another_project__404(client, admin_of, make_user) -> None:
    mine, theirs = make_project("mine"), make_project("theirs")
    outsider = make_user("outsider")
    services.membership_grant(project=theirs, user=outsider, role=Role.VIEWER, actor=TEST_ACTOR)
    browser = Client()
    browser.force_login(outsider)
    client.force_login(admin_of(mine))
    for value in (outsider.pk, "abc", ""):
        assert client.post("/p/mine/sign-in/sessions/revoke/", {"user": value}).status_code == 404
    assert browser.get("/p/theirs/").status_code == 200
