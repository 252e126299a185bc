"""Sign-in role rules, the roles a sign-in grants and revokes, and revoking sessions."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.models import Session
from django.core.exceptions import ValidationError
from django.test import Client

from audit.models import AuditEvent
from audit.services import SystemActor
from flags import services
from flags.constants import Role
from flags.models import Membership
from identity import services as identity
from identity.models import GroupRoleRule, IdpGrant
from tests.factories import TEST_ACTOR, make_project

pytestmark = pytest.mark.django_db
IDP = SystemActor("oidc:idp.example.com")
ISSUER = "https://idp.example.com"


def _roles(user: Any) -> set[tuple[str, str]]:
    return set(Membership.objects.filter(user=user).values_list("project__key", "role"))


def test_rule_create__audited_on_the_project(make_user) -> None:
    project = make_project("support")
    admin = make_user("admin")
    rule = identity.group_rule_create(project=project, group="  support-ai-approvers ", role=Role.APPROVER, actor=admin)
    assert (rule.group, rule.role) == ("support-ai-approvers", Role.APPROVER)
    event = AuditEvent.objects.get(action="sso_rule.created")
    assert (event.actor_id, event.project_id, event.after) == (admin.pk, project.pk,
                                                               {"group": "support-ai-approvers", "role": "approver"})


@pytest.mark.parametrize(("group", "message"), [("   ", "Name the group"), ("g" * 201, "At most 200 characters")])
def test_rule_create__bad_group__refused_nothing_written(group, message) -> None:
    project = make_project("support")
    with pytest.raises(ValidationError) as refused:
        identity.group_rule_create(project=project, group=group, role=Role.VIEWER, actor=TEST_ACTOR)
    assert message in str(refused.value.message_dict["group"])
    assert not GroupRoleRule.objects.exists() and not AuditEvent.objects.filter(action__startswith="sso_rule").exists()


def test_rule_create__duplicate__refused_beside_group() -> None:
    project = make_project("support")
    identity.group_rule_create(project=project, group="g", role=Role.VIEWER, actor=TEST_ACTOR)
    with pytest.raises(ValidationError) as refused:
        identity.group_rule_create(project=project, group="g", role=Role.VIEWER, actor=TEST_ACTOR)
    assert "already grants Viewer" in str(refused.value.message_dict["group"])
    assert GroupRoleRule.objects.count() == 1


def test_rule_update_and_delete__audited_with_before_and_after() -> None:
    project = make_project("support")
    rule = identity.group_rule_create(project=project, group="g", role=Role.VIEWER, actor=TEST_ACTOR)
    identity.group_rule_update(rule=rule, group="h", role=Role.EDITOR, actor=TEST_ACTOR)
    updated = AuditEvent.objects.get(action="sso_rule.updated")
    assert (updated.before, updated.after) == ({"group": "g", "role": "viewer"}, {"group": "h", "role": "editor"})
    with pytest.raises(ValidationError, match="Nothing changed"):
        identity.group_rule_update(rule=rule, group="h", role=Role.EDITOR, actor=TEST_ACTOR)
    identity.group_rule_delete(rule=rule, actor=TEST_ACTOR)
    deleted = AuditEvent.objects.get(action="sso_rule.deleted")
    assert (deleted.before, deleted.project_id) == ({"group": "h", "role": "editor"}, project.pk)
    assert not GroupRoleRule.objects.exists()


def test_roles_sync__group_left__provider_grant_revoked_hand_grant_kept(make_user) -> None:
    project = make_project("support")
    identity.group_rule_create(project=project, group="approvers", role=Role.APPROVER, actor=TEST_ACTOR)
    identity.group_rule_create(project=project, group="viewers", role=Role.VIEWER, actor=TEST_ACTOR)
    person = make_user("alice")
    services.membership_grant(project=project, user=person, role=Role.VIEWER, actor=TEST_ACTOR)  # by hand

    changes = identity.roles_sync_from_groups(user=person, groups={"approvers", "viewers"}, issuer=ISSUER, actor=IDP)
    assert [m.role for m in changes.granted] == [Role.APPROVER]  # viewer was already held (by hand)
    assert _roles(person) == {("support", Role.APPROVER), ("support", Role.VIEWER)}

    changes = identity.roles_sync_from_groups(user=person, groups=set(), issuer=ISSUER, actor=IDP)
    assert changes.revoked == [(project, Role.APPROVER)]
    assert _roles(person) == {("support", Role.VIEWER)}  # the hand grant stays
    revoked = AuditEvent.objects.get(action="role.revoked")
    assert revoked.actor_label == "system:oidc:idp.example.com" and revoked.actor_kind == "system"


def test_roles_sync__rule_deleted__role_goes_at_next_sign_in(make_user) -> None:
    project = make_project("support")
    rule = identity.group_rule_create(project=project, group="editors", role=Role.EDITOR, actor=TEST_ACTOR)
    person = make_user("alice")
    identity.roles_sync_from_groups(user=person, groups={"editors"}, issuer=ISSUER, actor=IDP)
    identity.group_rule_delete(rule=rule, actor=TEST_ACTOR)
    assert _roles(person) == {("support", Role.EDITOR)}  # nothing happens until she signs in
    identity.roles_sync_from_groups(user=person, groups={"editors"}, issuer=ISSUER, actor=IDP)
    assert _roles(person) == set()


def test_roles_sync__revoked_by_hand_then_group_still_there__granted_again(make_user) -> None:
    project = make_project("support")
    identity.group_rule_create(project=project, group="editors", role=Role.EDITOR, actor=TEST_ACTOR)
    person = make_user("alice")
    identity.roles_sync_from_groups(user=person, groups={"editors"}, issuer=ISSUER, actor=IDP)
    services.membership_revoke(project=project, user=person, role=Role.EDITOR, actor=TEST_ACTOR)
    assert not IdpGrant.objects.exists()  # the record went with the membership
    identity.roles_sync_from_groups(user=person, groups={"editors"}, issuer=ISSUER, actor=IDP)
    assert _roles(person) == {("support", Role.EDITOR)} and IdpGrant.objects.count() == 1


def test_roles_sync__last_admin__kept_and_said(make_user) -> None:
    project = make_project("support")
    identity.group_rule_create(project=project, group="admins", role=Role.ADMIN, actor=TEST_ACTOR)
    person = make_user("alice")
    identity.roles_sync_from_groups(user=person, groups={"admins"}, issuer=ISSUER, actor=IDP)
    changes = identity.roles_sync_from_groups(user=person, groups=set(), issuer=ISSUER, actor=IDP)
    assert changes.revoked == [] and changes.kept[0][1] == Role.ADMIN and "at least one project admin" in changes.kept[0][2]
    assert _roles(person) == {("support", Role.ADMIN)}


@pytest.mark.parametrize(("claim", "expected"), [(None, set()), ("solo", {"solo"}), (["a", " b ", 3, ""], {"a", "b"})])
def test_groups_from__shapes(claim, expected, settings) -> None:
    settings.OIDC_GROUPS_CLAIM = "roles"
    assert identity.groups_from({} if claim is None else {"roles": claim}) == expected


@pytest.mark.parametrize("claim", [{"a": 1}, ["g"] * 2_001])
def test_groups_from__unusable__sign_in_refused(claim) -> None:
    with pytest.raises(identity.SignInRefused):
        identity.groups_from({"groups": claim})


def test_user_sessions_revoke__ends_every_session_of_that_user_only(make_user) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    browsers = [Client(), Client(), Client()]
    browsers[0].force_login(alice)
    browsers[1].force_login(alice)
    browsers[2].force_login(bob)

    ended = identity.user_sessions_revoke(user=alice, actor=TEST_ACTOR)

    assert ended == 2
    remaining = [s.get_decoded().get(SESSION_KEY) for s in Session.objects.all()]
    assert remaining == [str(bob.pk)]
    event = AuditEvent.objects.get(action="user.sessions_revoked")
    assert event.after == {"user": "alice", "sessions_ended": 2} and event.target_id == str(alice.pk)
