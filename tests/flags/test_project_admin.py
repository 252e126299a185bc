"""Members and roles, SDK keys and the time zone in the console. (Sign-in throttling:
tests/audit/test_throttle.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model

from audit.models import AuditEvent
from flags import services
from flags.constants import ROLE_PERMISSIONS, Role
from flags.demo import seed_demo
from flags.models import Membership, Project, ProjectUserObjectPermission, SdkKey
from flags.permissions import project_permissions
from flags.snapshot_store import get_store, reset_store
from tests.factories import TEST_ACTOR
from tests.ofrep_client import evaluate

pytestmark = pytest.mark.django_db


def _user(username: str):
    return get_user_model().objects.get(username=username)


def _perms(user, project) -> set[str]:
    return set(ProjectUserObjectPermission.objects.filter(user=user, content_object=project)
               .values_list("permission__codename", flat=True))


def test_roles__demo_users__hold_their_roles_permissions(demo) -> None:
    assert _perms(_user("auditor"), demo) == set(ROLE_PERMISSIONS[Role.AUDITOR])
    assert _perms(_user("pm"), demo) == set(ROLE_PERMISSIONS[Role.APPROVER] | ROLE_PERMISSIONS[Role.VIEWER])


def test_members_page__admin_grants_a_role__permissions_and_audit(client, demo) -> None:
    client.force_login(_user("admin"))
    newcomer = get_user_model().objects.create_user("newcomer", password="x")
    response = client.post("/p/support-assistant/members/grant/", {"username": "newcomer", "role": "operator"})
    assert response.status_code == 302
    assert _perms(newcomer, demo) == set(ROLE_PERMISSIONS[Role.OPERATOR])
    event = AuditEvent.objects.filter(action="role.granted").latest("id")
    assert event.after["user"] == "newcomer" and event.after["role"] == "operator"
    assert event.actor_label.endswith("(admin)")
    page = client.get("/p/support-assistant/members/").content.decode()
    assert "newcomer" in page and "Operator" in page


def test_members_page__unknown_username__error_beside_field(client, demo) -> None:
    client.force_login(_user("admin"))
    response = client.post("/p/support-assistant/members/grant/", {"username": "ghost", "role": "viewer"})
    assert response.status_code == 422
    assert "No user “ghost”" in str(response.context["form"].errors["username"])


def test_members_page__revoke_one_of_two_roles__keeps_the_other_roles_permissions(client, demo) -> None:
    client.force_login(_user("admin"))
    pm = _user("pm")
    response = client.post("/p/support-assistant/members/revoke/", {"user": pm.pk, "role": "approver"})
    assert response.status_code == 302
    assert _perms(pm, demo) == {"view_project"}
    assert "approve_change" not in project_permissions(pm, demo)
    revoked = AuditEvent.objects.get(action="role.revoked")
    assert revoked.before == {"user": "pm", "role": "approver"}


def test_members_page__last_admin__cannot_be_revoked(client, demo) -> None:
    admin = _user("admin")
    client.force_login(admin)
    response = client.post("/p/support-assistant/members/revoke/", {"user": admin.pk, "role": "admin"}, follow=True)
    assert "keeps at least one project admin" in response.content.decode()
    assert Membership.objects.filter(project=demo, user=admin, role="admin").exists()
    assert not AuditEvent.objects.filter(action="role.revoked").exists()


def test_members_revoke__unicode_digit_id__404(client, demo) -> None:
    client.force_login(_user("admin"))
    assert client.post(f"/p/{demo.key}/members/revoke/", {"user": "²", "role": "viewer"}).status_code == 404


def test_sdk_keys_page__create_shows_key_once__revoke_stops_evaluation(client, demo) -> None:
    reset_store(None)
    client.force_login(_user("admin"))
    production = demo.environments.get(key="production")
    response = client.post("/p/support-assistant/sdk-keys/", {"environment": production.pk, "name": "support-api"})
    assert response.status_code == 200
    raw_key = response.context["new_key"]
    sdk_key = SdkKey.objects.get(name="support-api")
    assert raw_key.startswith(sdk_key.prefix) and raw_key not in sdk_key.key_hash
    listing = client.get("/p/support-assistant/sdk-keys/").content.decode()
    assert sdk_key.prefix in listing and raw_key not in listing and "never" in listing
    # The key works, and its use is recorded in a batch, not per request
    assert evaluate("support_agent_tool_mode", raw_key, {}).status == 200
    assert SdkKey.objects.get(pk=sdk_key.pk).last_used_at is None
    assert get_store().flush_key_use() == 1
    assert SdkKey.objects.get(pk=sdk_key.pk).last_used_at is not None
    # Revoked from the page: refused after the next poll
    response = client.post(f"/p/support-assistant/sdk-keys/{sdk_key.pk}/revoke/")
    assert response.status_code == 302
    get_store().refresh()
    assert evaluate("support_agent_tool_mode", raw_key, {}).status == 403
    assert AuditEvent.objects.filter(action="sdk_key.revoked", target_id=str(sdk_key.pk)).exists()
    reset_store(None)


def test_role_grant__via_service__is_idempotent_and_audited_once(demo) -> None:
    viewer = get_user_model().objects.create_user("v2", password="x")
    services.membership_grant(project=demo, user=viewer, role=Role.VIEWER, actor=TEST_ACTOR)
    services.membership_grant(project=demo, user=viewer, role=Role.VIEWER, actor=TEST_ACTOR)
    assert AuditEvent.objects.filter(action="role.granted", target_label__contains="v2").count() == 1


@pytest.mark.django_db
def test_time_zone__admin_sets_it_bad_name_refused_beside_the_field(client: Any) -> None:
    seed_demo()
    client.force_login(get_user_model().objects.get(username="admin"))
    bad = client.post("/p/support-assistant/time-zone/", {"time_zone": "Mars/Olympus"})
    assert bad.status_code == 422 and "is not a time zone name" in bad.content.decode()
    assert Project.objects.get(key="support-assistant").time_zone == "UTC"
    assert client.post("/p/support-assistant/time-zone/", {"time_zone": "Asia/Tokyo"}).status_code == 302
    assert Project.objects.get(key="support-assistant").time_zone == "Asia/Tokyo"
    assert AuditEvent.objects.get(action="project.updated").after == {"time_zone": "Asia/Tokyo"}
