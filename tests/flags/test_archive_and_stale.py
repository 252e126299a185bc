"""The end of a flag's life: a temporary flag needs an owner, review date and cleanup rule
before it goes on in a governed environment; archiving (off everywhere or cleanup due), a
grace period of serving, then FLAG_NOT_FOUND; restoring; and the last evaluation per flag
and environment, recorded in batches by the evaluation service."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import AuditEvent
from flags import services
from flags.constants import LifecycleStage
from flags.demo import seed_demo
from flags.models import Environment, EvaluationRecord, Flag, Targeting
from flags.snapshot_store import get_store
from tests.factories import TEST_ACTOR, make_project, make_string_flag, set_up_targeting
from tests.ofrep_client import evaluate

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_caches(fresh_caches: None) -> None:
    """Every test here starts and ends with empty process caches (snapshots, metric ids)."""


def production(flag: Flag) -> Targeting:
    return flag.targetings.select_related("environment").get(environment__key="production")


def test_turn_on_in_governed__temporary_flag_missing_contract__says_what_is_missing() -> None:
    flag = make_string_flag(make_project(), owner_team="", review_date=None, cleanup_rule="")
    with pytest.raises(ValidationError) as caught:
        services.targeting_update(targeting=production(flag), actor=TEST_ACTOR, enabled=True)
    assert caught.value.message_dict["enabled"] == [
        "A temporary flag needs an owner, a review date, a cleanup rule before it can be turned on in Production. "
        "Add them to the contract first."]
    # development is not governed; and a permanent flag needs none of them
    services.targeting_update(targeting=flag.targetings.get(environment__key="development"), actor=TEST_ACTOR,
                              enabled=True)
    gate = make_string_flag(flag.project, key="gate", lifetime="permission_gate", owner_team="", review_date=None,
                            cleanup_rule="")
    set_up_targeting(production(gate), enabled=True)
    # nor does an edit of a flag already on, so rolling back never waits for paperwork
    assert services.targeting_proposal(targeting=production(gate), changes={"rules": []})["enabled"] is True


def test_archive__only_off_everywhere_or_cleanup_due__then_restore(settings) -> None:
    flag = make_string_flag(make_project())
    set_up_targeting(production(flag), enabled=True)
    with pytest.raises(ValidationError, match="still on in Production"):
        services.flag_archive(flag=flag, actor=TEST_ACTOR, reason="done")
    services.targeting_update(targeting=production(flag), actor=TEST_ACTOR, enabled=False)
    with pytest.raises(ValidationError):
        services.flag_archive(flag=flag, actor=TEST_ACTOR, reason=" ")
    archived = services.flag_archive(flag=flag, actor=TEST_ACTOR, reason="launched; branch removed")
    assert archived.stage == LifecycleStage.ARCHIVED
    assert archived.served_until - archived.archived_at == datetime.timedelta(hours=settings.FEATUREOPS_ARCHIVE_GRACE_HOURS)
    assert AuditEvent.objects.get(action="flag.archived").reason == "launched; branch removed"
    # an archived flag cannot be turned on
    with pytest.raises(ValidationError, match="restore it"):
        services.targeting_update(targeting=production(flag), actor=TEST_ACTOR, enabled=True)
    restored = services.flag_restore(flag=flag, actor=TEST_ACTOR, reason="needed again")
    assert restored.stage == LifecycleStage.DRAFT and restored.archived_at is None
    assert AuditEvent.objects.filter(action="flag.restored").count() == 1


def test_archive__cleanup_due_flag_even_while_on() -> None:
    flag = make_string_flag(make_project(), review_date=timezone.localdate() + datetime.timedelta(days=1))
    set_up_targeting(production(flag), enabled=True)
    Flag.objects.filter(pk=flag.pk).update(stage=LifecycleStage.CLEANUP_DUE)
    flag.refresh_from_db()
    assert services.flag_archive(flag=flag, actor=TEST_ACTOR, reason="cleanup").stage == LifecycleStage.ARCHIVED


def test_archived__served_through_grace_then_flag_not_found() -> None:
    # Given an SDK key for production and the demo's incident flag, off in production
    seed_demo()
    environment = Environment.objects.get(key="production")
    _, key = services.sdk_key_create(environment=environment, name="t", actor=TEST_ACTOR)
    flag = Flag.objects.get(key="support_ai_incident_fallback")
    context = {"targetingKey": "acct-1"}
    # When it is turned off in development too and archived, it is still served during the grace period
    services.targeting_update(targeting=flag.targetings.get(environment__key="development"), actor=TEST_ACTOR,
                              enabled=False)
    services.flag_archive(flag=flag, actor=TEST_ACTOR, reason="replaced")
    get_store().poll_once()
    assert evaluate(flag.key, key, context).json()["value"] == "baseline_model"
    # and once the grace period ends and the lifecycle job runs, it answers FLAG_NOT_FOUND
    Flag.objects.filter(pk=flag.pk).update(served_until=timezone.now() - datetime.timedelta(seconds=1))
    services.flag_lifecycle_recompute(actor=services.LIFECYCLE_JOB)
    get_store().poll_once()
    response = evaluate(flag.key, key, context)
    assert response.status == 404 and response.json()["errorCode"] == "FLAG_NOT_FOUND"
    assert AuditEvent.objects.filter(action="flag.retired", flag_id=flag.pk).count() == 1
    services.flag_lifecycle_recompute(actor=services.LIFECYCLE_JOB)  # idempotent
    assert AuditEvent.objects.filter(action="flag.retired", flag_id=flag.pk).count() == 1


def test_evaluations__recorded_in_memory_and_flushed_in_one_batch() -> None:
    seed_demo()
    environment = Environment.objects.get(key="production")
    _, key = services.sdk_key_create(environment=environment, name="t", actor=TEST_ACTOR)
    context = {"targetingKey": "acct-1", "accountId": "acct-1"}
    store = get_store()
    # When flags are evaluated many times, nothing is written per evaluation
    with CaptureQueriesContext(connection) as captured:
        for _ in range(20):
            evaluate("support_agent_tool_mode", key, context)
    assert not any("evaluationrecord" in q["sql"] for q in captured.captured_queries)
    assert not EvaluationRecord.objects.exists()
    # and a flush writes one row per (flag, environment)
    assert store.flush_evaluations() == 1
    record = EvaluationRecord.objects.get()
    assert record.flag.key == "support_agent_tool_mode" and record.environment == environment
    # A bulk evaluation marks every flag of the environment
    evaluate(None, key, context)
    assert store.flush_evaluations() == 3
    assert EvaluationRecord.objects.filter(environment=environment).count() == 3


def test_flag_page__lifecycle_card_archive_and_restore(client) -> None:
    from django.contrib.auth import get_user_model

    seed_demo()
    client.force_login(get_user_model().objects.get(username="owner"))
    url = "/p/support-assistant/flags/support_ai_incident_fallback/"
    page = client.get(url).content.decode()
    assert "It is still on in Development" in page and "Last evaluated" in page
    flag = Flag.objects.get(key="support_ai_incident_fallback")
    services.targeting_update(targeting=flag.targetings.get(environment__key="development"), actor=TEST_ACTOR,
                              enabled=False)
    assert "Archive this flag…" in client.get(url).content.decode()
    missing = client.post(url + "archive/", {"action": "archive", "reason": ""})
    assert missing.status_code == 302 and Flag.objects.get(pk=flag.pk).stage != LifecycleStage.ARCHIVED
    client.post(url + "archive/", {"action": "archive", "reason": "replaced by the guardrail mode flag"})
    page = client.get(url).content.decode()
    assert "Still served until" in page and "Restore" in page
    client.post(url + "archive/", {"action": "restore", "reason": "still needed"})
    assert Flag.objects.get(pk=flag.pk).stage == LifecycleStage.DRAFT


def test_flag_page__governed_card_says_what_a_temporary_flag_lacks(client) -> None:
    from django.contrib.auth import get_user_model

    from flags.constants import Role

    project = make_project("lack")
    make_string_flag(project, key="bare", owner_team="", review_date=None, cleanup_rule="")
    user = get_user_model().objects.create_user("viewer1")
    services.membership_grant(project=project, user=user, role=Role.VIEWER, actor=TEST_ACTOR)
    client.force_login(user)
    page = client.get("/p/lack/flags/bare/").content.decode()
    assert "this temporary flag needs an owner, a review date, a cleanup rule" in page


def test_restore_of_a_retired_flag__stays_off_in_governed_environments(demo: Any) -> None:
    profile = Flag.objects.get(key="support_assistant_profile")
    Flag.objects.filter(pk=profile.pk).update(stage=LifecycleStage.CLEANUP_DUE)
    profile.refresh_from_db()
    services.flag_archive(flag=profile, actor=TEST_ACTOR, reason="done")
    Flag.objects.filter(pk=profile.pk).update(served_until=timezone.now())
    services.retire_archived_flags(actor=TEST_ACTOR)
    services.flag_restore(flag=profile, actor=TEST_ACTOR, reason="needed after all")
    assert production(profile).enabled is False  # back on only through a request
    assert profile.targetings.get(environment__key="development").enabled is True
