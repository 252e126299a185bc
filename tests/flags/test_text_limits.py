"""Free-text limits on the catalog's paths (archive and restore, descriptions, revocations,
webhooks, metrics), and who reads the audit trail: project admins their projects', auditors
also the account-level rows. Text over its limit is refused on the field, never cut."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from audit.models import AuditEvent
from flags import services
from flags.constants import LifecycleStage, Role
from flags.models import Flag, Membership, ProjectUserObjectPermission, SdkKey
from flags.permissions import audit_project_ids, sees_account_events
from telemetry.services import metric_create
from tests.factories import TEST_ACTOR, grant, make_project, make_string_flag
from webhooks.models import Webhook
from webhooks.services import webhook_create

pytestmark = pytest.mark.django_db
TOO_LONG_REASON = "Keep the reason to 2,000 characters at most (this one has 2,001)."


def test_flag_archive_console__reason_of_2001_characters__refused_not_cut_and_not_archived(client, make_user) -> None:
    # Given a flag that may be archived (off everywhere), and its editor
    project = make_project()
    flag = make_string_flag(project)
    editor = make_user("editor")
    grant(project, editor, Role.EDITOR)
    rows = AuditEvent.objects.count()
    # When they archive it with a 2,001-character reason
    client.force_login(editor)
    response = client.post(f"/p/{project.key}/flags/{flag.key}/archive/", {"action": "archive", "reason": "a" * 2_001},
                           follow=True)
    # Then it is refused with the count, and nothing changed
    assert TOO_LONG_REASON in response.content.decode()
    assert Flag.objects.get(pk=flag.pk).stage != LifecycleStage.ARCHIVED
    assert AuditEvent.objects.exclude(action__startswith="auth.").count() == rows


def test_flag_restore__reason_over_the_limit__refused_and_still_archived() -> None:
    flag = services.flag_archive(flag=make_string_flag(make_project()), actor=TEST_ACTOR, reason="retired")
    with pytest.raises(ValidationError) as refused:
        services.flag_restore(flag=flag, actor=TEST_ACTOR, reason="r" * 2_001)
    assert refused.value.message_dict == {"reason": [TOO_LONG_REASON]}
    assert Flag.objects.get(pk=flag.pk).stage == LifecycleStage.ARCHIVED


@pytest.mark.parametrize(("field", "limit", "words"), [("description", 5_000, "description"),
                                                       ("cleanup_rule", 2_000, "cleanup rule"),
                                                       ("rollback_action", 2_000, "rollback action")])
def test_flag_update__free_text_over_its_limit__refused_on_the_field_nothing_written(field, limit, words) -> None:
    flag = make_string_flag(make_project())
    version, rows = flag.version, AuditEvent.objects.count()
    with pytest.raises(ValidationError) as refused:
        services.flag_update(flag=flag, actor=TEST_ACTOR, **{field: "d" * (limit + 1)})
    assert refused.value.message_dict == {
        field: [f"Keep the {words} to {limit:,} characters at most (this one has {limit + 1:,})."]}
    assert Flag.objects.get(pk=flag.pk).version == version and AuditEvent.objects.count() == rows
    services.flag_update(flag=flag, actor=TEST_ACTOR, **{field: "d" * limit})  # the limit itself is fine
    assert getattr(Flag.objects.get(pk=flag.pk), field) == "d" * limit


def test_variation_and_segment__description_over_the_limit__refused() -> None:
    project = make_project()
    flag = make_string_flag(project)
    with pytest.raises(ValidationError, match="description to 5,000 characters at most"):
        services.variation_create(flag=flag, key="draft", value="draft", description="v" * 5_001, actor=TEST_ACTOR)
    with pytest.raises(ValidationError, match="description to 5,000 characters at most"):
        services.segment_create(project=project, key="long", name="Long", description="s" * 5_001, actor=TEST_ACTOR)
    assert not flag.variations.filter(key="draft").exists() and not project.segments.filter(key="long").exists()


def test_metric_create__description_over_the_limit__refused() -> None:
    project = make_project()
    with pytest.raises(ValidationError) as refused:
        metric_create(project=project, key="latency", name="Latency", kind="p95", higher_is_better=False,
                      description="m" * 5_001, actor=TEST_ACTOR)
    assert list(refused.value.message_dict) == ["description"]


def _admin(client: Any, make_user: Any) -> Any:
    project = make_project()
    admin = make_user("project_admin")
    grant(project, admin, Role.ADMIN)
    client.force_login(admin)
    return project


def test_sdk_key_revoke_console__reason_over_the_limit__refused_not_cut_key_still_valid(client, make_user) -> None:
    project = _admin(client, make_user)
    sdk_key, _ = services.sdk_key_create(environment=project.environments.get(key="production"), name="k",
                                         actor=TEST_ACTOR)
    response = client.post(f"/p/{project.key}/sdk-keys/{sdk_key.pk}/revoke/", {"reason": "k" * 2_001}, follow=True)
    assert TOO_LONG_REASON in response.content.decode()
    assert SdkKey.objects.get(pk=sdk_key.pk).revoked_at is None


def test_member_revoke_console__reason_over_the_limit__refused_not_cut_role_kept(client, make_user) -> None:
    project = _admin(client, make_user)
    viewer = make_user("viewer")
    grant(project, viewer, Role.VIEWER)
    response = client.post(f"/p/{project.key}/members/revoke/",
                           {"user": viewer.pk, "role": "viewer", "reason": "m" * 2_001}, follow=True)
    assert TOO_LONG_REASON in response.content.decode()
    assert Membership.objects.filter(project=project, user=viewer, role=Role.VIEWER).exists()


def test_webhook_delete_console__reason_over_the_limit__refused_not_cut_webhook_kept(client, make_user) -> None:
    project = _admin(client, make_user)
    webhook, _ = webhook_create(project_id=project.pk, url="https://hooks.example.com/x", events=[], actor=TEST_ACTOR)
    response = client.post(f"/p/{project.key}/webhooks/{webhook.pk}/delete/", {"reason": "w" * 2_001}, follow=True)
    assert TOO_LONG_REASON in response.content.decode()
    assert Webhook.objects.filter(pk=webhook.pk).exists()


def test_roles__admin_reads_and_exports_their_trail__only_auditors_read_account_events(make_user) -> None:
    project = make_project()
    admin, auditor, editor = make_user("a"), make_user("b"), make_user("c")
    grant(project, admin, Role.ADMIN)
    grant(project, auditor, Role.AUDITOR)
    grant(project, editor, Role.EDITOR)
    assert audit_project_ids(admin) == audit_project_ids(admin, "export_audit") == {project.pk}
    assert audit_project_ids(auditor) == {project.pk} and audit_project_ids(editor) == frozenset()
    assert (sees_account_events(admin), sees_account_events(auditor), sees_account_events(editor)) == (False, True,
                                                                                                      False)


def test_migration_0004__existing_admins_and_auditors__given_their_audit_permissions(make_user) -> None:
    # Given an admin and an auditor whose permission rows predate the migration
    from django.db.migrations.loader import MigrationLoader

    project = make_project()
    admin, auditor = make_user("old_admin"), make_user("old_auditor")
    grant(project, admin, Role.ADMIN)
    grant(project, auditor, Role.AUDITOR)
    ProjectUserObjectPermission.objects.filter(
        permission__codename__in=["view_audit", "export_audit", "view_account_audit"],
        user__in=[admin, auditor]).exclude(user=auditor, permission__codename__in=["view_audit", "export_audit"]).delete()
    assert audit_project_ids(admin) == frozenset() and not sees_account_events(auditor)
    migration = importlib.import_module("flags.migrations.0004_text_limits_and_audit_readers")
    apps = MigrationLoader(connection).project_state(("flags", "0004_text_limits_and_audit_readers")).apps
    # When the migration's data step runs
    migration.grant(apps, None)
    # Then the admin reads and exports the project's trail, and the auditor the account events too
    assert audit_project_ids(admin) == audit_project_ids(admin, "export_audit") == {project.pk}
    assert sees_account_events(auditor) and not sees_account_events(admin)
    # and going back removes exactly that
    migration.revoke(apps, None)
    assert audit_project_ids(admin) == frozenset() and audit_project_ids(auditor) == {project.pk}
    assert not sees_account_events(auditor)
