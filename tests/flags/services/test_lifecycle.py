"""Lifecycle stages, recomputed by a Celery task: eagerly in unit tests, and once through a
real worker and the configured broker."""

from __future__ import annotations

import datetime
import time
import uuid

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from featureops_site.celery import app as celery_app
from flags import services
from flags.constants import LifecycleStage, Lifetime
from flags.models import Flag, Targeting
from flags.tasks import recompute_lifecycle_stages
from tests.factories import make_project, make_string_flag, set_up_targeting
from tests.workers import require_broker


def _turn_on(flag: Flag, environment_key: str, **changes: object) -> Targeting:
    targeting = Targeting.objects.get(flag=flag, environment__key=environment_key)
    return set_up_targeting(targeting, enabled=True, **changes)


@pytest.mark.django_db
def test_compute_stage__off_everywhere__draft_then_on__active() -> None:
    flag = make_string_flag(make_project())
    now = timezone.now()
    assert services.compute_stage(flag, list(flag.targetings.all()), today=now.date(), now=now) == "draft"
    _turn_on(flag, "development")
    assert services.compute_stage(flag, list(flag.targetings.all()), today=now.date(), now=now) == "active"


@pytest.mark.django_db
def test_compute_stage__temporary_past_review_date__cleanup_due_but_permanent_never() -> None:
    project = make_project()
    yesterday = timezone.localdate() - datetime.timedelta(days=1)
    temporary = make_string_flag(project, key="temp", review_date=yesterday)
    permanent = make_string_flag(project, key="gate", review_date=yesterday, lifetime=Lifetime.PERMISSION_GATE)
    now = timezone.now()
    assert services.compute_stage(temporary, [], today=now.date(), now=now) == "cleanup_due"
    assert services.compute_stage(permanent, [], today=now.date(), now=now) == "draft"


@pytest.mark.django_db
def test_compute_stage__one_variation_to_everyone_in_production_long_enough__released(settings) -> None:
    settings.FEATUREOPS_RELEASED_AFTER_DAYS = 14
    flag = make_string_flag(make_project())
    _turn_on(flag, "production", default_serve={"variation": "read_only"})
    targetings = list(flag.targetings.select_related("environment"))
    now = timezone.now()
    assert services.compute_stage(flag, targetings, today=now.date(), now=now) == "active"
    later = now + datetime.timedelta(days=15)
    assert services.compute_stage(flag, targetings, today=later.date(), now=later) == "released"


@pytest.mark.django_db
def test_recompute_task__eager__moves_stages_with_system_audit_rows() -> None:
    project = make_project()
    flag = make_string_flag(project, review_date=timezone.localdate() - datetime.timedelta(days=3))
    other = make_string_flag(project, key="other")
    _turn_on(other, "development")
    moved = recompute_lifecycle_stages.apply().get()
    assert moved == 2
    flag.refresh_from_db()
    other.refresh_from_db()
    assert flag.stage == LifecycleStage.CLEANUP_DUE and other.stage == LifecycleStage.ACTIVE
    events = AuditEvent.objects.filter(action="flag.stage_changed")
    assert {(e.flag_id, e.after["stage"], e.actor_kind) for e in events} == {
        (flag.pk, "cleanup_due", "system"), (other.pk, "active", "system")}
    # A second run finds nothing to move and writes nothing.
    assert recompute_lifecycle_stages.apply().get() == 0
    assert AuditEvent.objects.filter(action="flag.stage_changed").count() == 2


def test_beat_schedule__declares_the_lifecycle_task() -> None:
    schedule = celery_app.conf.beat_schedule
    assert schedule["recompute-lifecycle-stages"]["task"] == recompute_lifecycle_stages.name
    assert recompute_lifecycle_stages.name in celery_app.tasks


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_recompute_task__real_worker_and_broker__stage_changes_in_database() -> None:
    from celery.contrib.testing.worker import start_worker

    require_broker()
    # Given a temporary flag whose review date has passed, still recorded as draft
    flag = make_string_flag(make_project(), review_date=timezone.localdate() - datetime.timedelta(days=2))
    assert flag.stage == LifecycleStage.DRAFT
    # When the task is sent through the broker to a real worker
    # (a queue of its own, so no other consumer of the broker can take the message)
    queue = f"test-lifecycle-{uuid.uuid4().hex[:12]}"
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10, queues=[queue]):
        recompute_lifecycle_stages.apply_async(queue=queue)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            flag.refresh_from_db()
            if flag.stage == LifecycleStage.CLEANUP_DUE:
                break
            time.sleep(0.2)
    # Then the worker moved it and recorded why
    assert flag.stage == LifecycleStage.CLEANUP_DUE
    assert AuditEvent.objects.filter(action="flag.stage_changed", flag_id=flag.pk, actor_kind="system").exists()
