"""Accounts and permission groups changed in /admin/: one audit row per change, in the same
transaction, naming the acting admin, with before/after of the changed fields and no hash."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.admin import ModelAdmin
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from audit.constants import AuditAction
from audit.models import AuditEvent
from audit.verify import verify_chain
from flags import services
from flags.constants import Role
from flags.models import Membership
from tests.factories import TEST_ACTOR, make_project

pytestmark = pytest.mark.django_db

ACCOUNT_ACTIONS = [
    AuditAction.USER_CREATED, AuditAction.USER_UPDATED, AuditAction.USER_PASSWORD_CHANGED, AuditAction.USER_DELETED,
    AuditAction.GROUP_CREATED, AuditAction.GROUP_UPDATED, AuditAction.GROUP_DELETED,
]
NEW_PASSWORD = "A-new-long-passphrase-42"  # noqa: S105


@pytest.fixture
def root(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests-1")


@pytest.fixture
def admin_client(client: Any, root: User) -> Any:
    client.force_login(root)
    return client


def _account_rows() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action__in=ACCOUNT_ACTIONS).order_by("id"))


def _row_text(event: AuditEvent) -> str:
    return " ".join(str(getattr(event, field.attname)) for field in AuditEvent._meta.fields)


def _split(moment: Any) -> tuple[str, str]:
    local = timezone.localtime(moment)
    return local.strftime("%Y-%m-%d"), local.strftime("%H:%M:%S")


def _change_form(user: User, **changes: Any) -> dict[str, Any]:
    """The change form as the admin page would post it back, with `changes` applied."""
    data: dict[str, Any] = {
        "username": user.username, "first_name": user.first_name, "last_name": user.last_name,
        "email": user.email, "groups": [g.pk for g in user.groups.all()],
        "user_permissions": [p.pk for p in user.user_permissions.all()],
        "date_joined_0": _split(user.date_joined)[0], "date_joined_1": _split(user.date_joined)[1],
        "initial-date_joined_0": _split(user.date_joined)[0], "initial-date_joined_1": _split(user.date_joined)[1],
        "last_login_0": "", "last_login_1": "",
    }
    for flag in ("is_active", "is_staff", "is_superuser"):
        if getattr(user, flag):
            data[flag] = "on"
    for key, value in changes.items():
        if value is False:
            data.pop(key, None)
        else:
            data[key] = "on" if value is True else value
    return data


def _add_user(admin_client: Any, username: str = "bob") -> Any:
    return admin_client.post(reverse("admin:auth_user_add"), {
        "username": username, "usable_password": "true", "password1": "pw-Bob-first-1", "password2": "pw-Bob-first-1",
    })


def test_user_admin__add_grant_password_delete__one_row_each_and_the_chain_verifies(
        admin_client: Any, root: User) -> None:
    # Given an approvers group and a superuser signed in to the admin
    approvers = Group.objects.create(name="Approvers")

    # When they add bob with the add form
    response = _add_user(admin_client)
    # Then bob exists, and one user.created row names root as actor and holds no hash
    assert response.status_code == 302
    bob = User.objects.get(username="bob")
    [created] = _account_rows()
    assert (created.action, created.actor_id, created.actor_label) == (AuditAction.USER_CREATED, root.pk, "root")
    assert (created.target_type, created.target_id, created.target_label) == ("auth.user", str(bob.pk), "bob")
    assert created.before is None
    assert created.after["username"] == "bob" and created.after["password"] == "set"
    assert created.after["is_staff"] is False and created.after["groups"] == []
    assert bob.password not in _row_text(created) and "md5$" not in _row_text(created)

    # When they grant staff, superuser and the group on the change form, and set an email
    response = admin_client.post(reverse("admin:auth_user_change", args=[bob.pk]), _change_form(
        bob, is_staff=True, is_superuser=True, groups=[approvers.pk], email="bob@example.com"))
    # Then one user.updated row holds exactly the changed fields, before and after
    assert response.status_code == 302
    updated = _account_rows()[-1]
    assert len(_account_rows()) == 2
    assert (updated.action, updated.actor_id) == (AuditAction.USER_UPDATED, root.pk)
    assert updated.before == {"is_staff": False, "is_superuser": False, "groups": [], "email": ""}
    assert updated.after == {"is_staff": True, "is_superuser": True, "groups": ["Approvers"],
                             "email": "bob@example.com"}
    assert "staff status on" in updated.summary and "groups +Approvers" in updated.summary

    # When they change bob's password with the admin's password form
    response = admin_client.post(reverse("admin:auth_user_password_change", args=[bob.pk]), {
        "usable_password": "true", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    # Then the password changed and one row says so, without either hash or the password
    assert response.status_code == 302
    old_hash, bob = bob.password, User.objects.get(pk=bob.pk)
    assert bob.check_password(NEW_PASSWORD)
    changed = _account_rows()[-1]
    assert len(_account_rows()) == 3
    assert (changed.action, changed.actor_id, changed.target_label) == (
        AuditAction.USER_PASSWORD_CHANGED, root.pk, "bob")
    assert (changed.before, changed.after) == ({"password": "set"}, {"password": "changed"})
    text = _row_text(changed)
    assert old_hash not in text and bob.password not in text and NEW_PASSWORD not in text and "md5$" not in text

    # When they delete bob
    response = admin_client.post(reverse("admin:auth_user_delete", args=[bob.pk]), {"post": "yes"})
    # Then bob is gone and one user.deleted row keeps what he was, by label
    assert response.status_code == 302
    assert not User.objects.filter(pk=bob.pk).exists()
    deleted = _account_rows()[-1]
    assert len(_account_rows()) == 4
    assert (deleted.action, deleted.actor_id, deleted.target_id, deleted.target_label) == (
        AuditAction.USER_DELETED, root.pk, str(bob.pk), "bob")
    assert deleted.before["is_superuser"] is True and deleted.before["groups"] == ["Approvers"]
    assert deleted.after is None and "md5$" not in _row_text(deleted)

    # And the chain verifies, by the helper and by the command
    assert verify_chain().ok
    out = io.StringIO()
    call_command("verify_audit", stdout=out)
    assert "audit chain intact" in out.getvalue()


def test_user_change__saved_unchanged__no_row(admin_client: Any, make_user: Any) -> None:
    # Given a user whose date_joined has microseconds the admin's widgets do not show
    carol = make_user("carol")
    # When the change form is posted back as shown
    response = admin_client.post(reverse("admin:auth_user_change", args=[carol.pk]), _change_form(carol))
    # Then the save succeeds and, nothing having changed, no row is written
    assert response.status_code == 302
    assert _account_rows() == []


def test_user_change__permissions_and_username__sorted_codenames_and_rename(
        admin_client: Any, make_user: Any) -> None:
    # Given a user with no direct permissions
    dave = make_user("dave")
    perms = Permission.objects.filter(codename__in=["view_flag", "change_user"])
    # When the admin renames them and grants two permissions
    admin_client.post(reverse("admin:auth_user_change", args=[dave.pk]),
                      _change_form(dave, username="david", user_permissions=[p.pk for p in perms]))
    # Then the row names the permissions as sorted app_label.codename and shows the rename
    [row] = _account_rows()
    assert row.before == {"username": "dave", "user_permissions": []}
    assert row.after == {"username": "david", "user_permissions": ["auth.change_user", "flags.view_flag"]}
    assert row.target_label == "david" and "username dave → david" in row.summary


def test_user_add__duplicate_username__form_refused_and_no_row(admin_client: Any, make_user: Any) -> None:
    # Given an existing bob
    make_user("bob")
    # When the admin tries to add another bob
    response = _add_user(admin_client, "bob")
    # Then the form is shown again with the error, and nothing is recorded
    assert response.status_code == 200 and response.context["adminform"].form.errors["username"]
    assert User.objects.filter(username="bob").count() == 1
    assert _account_rows() == []


def test_user_change__duplicate_username__no_row(admin_client: Any, make_user: Any) -> None:
    # Given bob and erin
    make_user("bob")
    erin = make_user("erin")
    # When erin is renamed to bob, and made staff, on the change form
    response = admin_client.post(reverse("admin:auth_user_change", args=[erin.pk]),
                                 _change_form(erin, username="bob", is_staff=True))
    # Then the form refuses it, erin is unchanged and no row is written
    assert response.status_code == 200
    erin.refresh_from_db()
    assert (erin.username, erin.is_staff) == ("erin", False)
    assert _account_rows() == []


def test_user_change__fails_after_the_audit_row__change_and_row_roll_back(
        admin_client: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the admin's own log write fails, after the audit row is written
    frank = make_user("frank")

    def broken_log(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("log write failed")

    monkeypatch.setattr(ModelAdmin, "log_change", broken_log)
    # When frank is made superuser
    with pytest.raises(RuntimeError):
        admin_client.post(reverse("admin:auth_user_change", args=[frank.pk]), _change_form(frank, is_superuser=True))
    # Then neither the change nor its row survives: they share one transaction
    frank.refresh_from_db()
    assert frank.is_superuser is False
    assert _account_rows() == []


def test_password_change__audit_write_fails__password_unchanged(
        admin_client: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the audit write fails
    gina = make_user("gina")

    def broken_record(**kwargs: Any) -> None:
        raise RuntimeError("audit down")

    monkeypatch.setattr("flags.admin_accounts.record", broken_record)
    # When the admin sets gina's password
    with pytest.raises(RuntimeError):
        admin_client.post(reverse("admin:auth_user_password_change", args=[gina.pk]), {
            "usable_password": "true", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    # Then the password view ran in one transaction with the audit write: nothing changed
    gina.refresh_from_db()
    assert gina.check_password("pw-for-tests-1") and not gina.check_password(NEW_PASSWORD)


def test_password_change__disabled__row_says_unusable(admin_client: Any, make_user: Any) -> None:
    # Given a user with a password
    hana = make_user("hana")
    # When the admin disables password sign-in for her
    response = admin_client.post(reverse("admin:auth_user_password_change", args=[hana.pk]),
                                 {"usable_password": "false", "unset-password": "1"})
    # Then one row records it, with no hash
    assert response.status_code == 302
    [row] = _account_rows()
    assert (row.action, row.before, row.after) == (
        AuditAction.USER_PASSWORD_CHANGED, {"password": "set"}, {"password": "unusable"})
    assert "Disabled password sign-in" in row.summary
    hana.refresh_from_db()
    assert hana.password not in _row_text(row)


def test_password_change__mismatched_passwords__no_row(admin_client: Any, make_user: Any) -> None:
    # Given a user
    ivan = make_user("ivan")
    # When the two passwords differ
    response = admin_client.post(reverse("admin:auth_user_password_change", args=[ivan.pk]), {
        "usable_password": "true", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD + "x"})
    # Then the form refuses and nothing is recorded
    assert response.status_code == 200
    assert _account_rows() == []


def test_user_delete__holds_a_project_role__refused_and_no_row(admin_client: Any, make_user: Any) -> None:
    # Given a user holding a role in a project
    project = make_project("shop")
    june = make_user("june")
    services.membership_grant(project=project, user=june, role=Role.OPERATOR, actor=TEST_ACTOR)
    # When the admin tries to delete them, singly or with the "delete selected" action
    single = admin_client.post(reverse("admin:auth_user_delete", args=[june.pk]), {"post": "yes"})
    bulk = admin_client.post(reverse("admin:auth_user_changelist"), {
        "action": "delete_selected", "_selected_action": [june.pk], "post": "yes"})
    # Then the admin refuses (the role would vanish unaudited): june, her role and the trail stay
    assert single.status_code == 403
    assert bulk.status_code == 403
    assert User.objects.filter(pk=june.pk).exists()
    assert Membership.objects.filter(project=project, user=june).exists()
    assert _account_rows() == []


def test_user_bulk_delete__two_users__one_row_each(admin_client: Any, make_user: Any) -> None:
    # Given two users
    kim, lee = make_user("kim"), make_user("lee")
    # When the changelist's "delete selected" action removes both
    response = admin_client.post(reverse("admin:auth_user_changelist"), {
        "action": "delete_selected", "_selected_action": [kim.pk, lee.pk], "post": "yes"})
    # Then both are gone, with one user.deleted row each
    assert response.status_code == 302
    assert not User.objects.filter(pk__in=[kim.pk, lee.pk]).exists()
    rows = _account_rows()
    assert [r.action for r in rows] == [AuditAction.USER_DELETED] * 2
    assert sorted(r.target_label for r in rows) == ["kim", "lee"]
    assert verify_chain().ok


def test_group_admin__create_change_delete__one_row_each(admin_client: Any, root: User, make_user: Any) -> None:
    # Given two permissions and a user to put in the group
    view_flag = Permission.objects.get(codename="view_flag")
    change_user = Permission.objects.get(codename="change_user")
    mo = make_user("mo")

    # When the admin creates a group with one permission
    admin_client.post(reverse("admin:auth_group_add"), {"name": "Support", "permissions": [view_flag.pk]})
    # Then one group.created row
    group = Group.objects.get(name="Support")
    [created] = _account_rows()
    assert (created.action, created.actor_id, created.target_type, created.target_label) == (
        AuditAction.GROUP_CREATED, root.pk, "auth.group", "Support")
    assert created.after == {"name": "Support", "permissions": ["flags.view_flag"]}

    # When they add a permission to it
    admin_client.post(reverse("admin:auth_group_change", args=[group.pk]),
                      {"name": "Support", "permissions": [view_flag.pk, change_user.pk]})
    # Then one group.updated row with the permissions before and after
    updated = _account_rows()[-1]
    assert updated.action == AuditAction.GROUP_UPDATED
    assert updated.before == {"permissions": ["flags.view_flag"]}
    assert updated.after == {"permissions": ["auth.change_user", "flags.view_flag"]}
    assert "permissions +auth.change_user" in updated.summary

    # When they delete it while mo is a member
    mo.groups.add(group)
    admin_client.post(reverse("admin:auth_group_delete", args=[group.pk]), {"post": "yes"})
    # Then one group.deleted row names what it granted and to whom
    deleted = _account_rows()[-1]
    assert len(_account_rows()) == 3
    assert deleted.action == AuditAction.GROUP_DELETED
    assert deleted.before == {"name": "Support", "permissions": ["auth.change_user", "flags.view_flag"],
                              "users": ["mo"]}
    assert verify_chain().ok


def test_membership_admin__add__refused(admin_client: Any, make_user: Any) -> None:
    # Given a project and a user without a role in it
    project = make_project("shop")
    nia = make_user("nia")
    # When a superuser opens or posts the admin's add form for a membership
    page = admin_client.get(reverse("admin:flags_membership_add"))
    posted = admin_client.post(reverse("admin:flags_membership_add"),
                               {"project": project.pk, "user": nia.pk, "role": Role.ADMIN})
    # Then the admin refuses both: roles are granted on the console's Members page
    assert page.status_code == 403 and posted.status_code == 403
    assert not Membership.objects.filter(user=nia).exists()
