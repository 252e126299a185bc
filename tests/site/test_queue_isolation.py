"""Safety jobs never wait behind a backlog: with 5,000 webhook deliveries pending to a slow
receiver, a scheduled change applies at its time and a red guardrail stops its plan's harm
(the plan, in its first stage, rolls back to the baseline) within one sweep, because each queue has a worker of its own (featureops_site/queues.py).

Everything is real: PostgreSQL, the configured broker, four Celery workers in their own
processes as deployed (beat beside the safety worker), a slow HTTP receiver on loopback, and
events posted through the events API. Nothing here calls a task or a service the workers run."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import SystemActor
from featureops_site.queues import QUEUES, queue_of, task_routes
from flags import services as flag_services
from flags.demo import seed_demo
from flags.models import Environment
from rollouts.change_control import applying, approving
from rollouts.models import ChangeRequest, RolloutPlan
from telemetry.demo import seed_demo_metrics
from tests.rollouts.plans.through_workers import BASELINE, CANDIDATE, post_cases, served, started_plan
from tests.rollouts.support import escalate, production, user
from tests.webhooks.conftest import _serve
from tests.workers import (
    delete_queues,
    require_broker,
    routed_with_prefix,
    start_worker,
    stop_worker,
    unique_prefix,
    worker_env,
)
from webhooks.models import WebhookDelivery
from webhooks.services import dispatch, webhook_create

BACKLOG = 5_000
RECEIVER_SECONDS = 2.0  # each delivery takes the receiver this long to answer
SCHEDULER_SECONDS = 2  # the scheduled-apply sweep's interval (beat), as the test configures it
SWEEP_SECONDS = 5  # the guardrail sweep's interval
AGGREGATE_SECONDS = 2


def test_every_task_of_ours_is_routed_to_a_queue() -> None:
    from featureops_site.celery import app

    app.loader.import_default_modules()
    ours = {name for name in app.tasks if not name.startswith(("celery.", "tests."))}  # tests' probes aside
    assert ours, "no task registered"
    assert {name: queue_of(name) for name in ours if queue_of(name) is None} == {}
    # and nothing is routed that does not exist (a renamed task would silently lose its route)
    assert {task for tasks in QUEUES.values() for task in tasks} == ours
    # beat's entries each name a routed task
    assert {entry["task"] for entry in app.conf.beat_schedule.values()} <= ours
    # a prefix moves every route, and only by the prefix
    assert task_routes("staging.")["webhooks.tasks.deliver_webhook"] == {"queue": "staging.notifications"}
    assert task_routes()["rollouts.tasks.apply_scheduled_changes"] == {"queue": "safety"}


def wait_for(condition: Callable[[], bool], seconds: float) -> float | None:
    """Seconds until condition() held (polled every 0.2 s), or None if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    return None


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_backlog_of_slow_deliveries__scheduled_apply_and_guardrail_rollback_keep_their_time(
    tmp_path: Path, fresh_caches: None, record_property: Callable[[str, object], None],
) -> None:
    require_broker()
    prefix = unique_prefix("isolation")
    # Given the demo, committed; a webhook on every flag event to a receiver that takes 2 s to answer
    project, _ = seed_demo()
    seed_demo_metrics(project)
    with _serve() as receiver, routed_with_prefix(prefix):
        receiver.script = [(200, RECEIVER_SECONDS)]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("django.conf.settings.WEBHOOK_ALLOWED_NETWORKS", ["127.0.0.1/32"])
            webhook_create(project_id=project.pk, url=receiver.url, events=["flag."], actor=SystemActor("tests"))
        # and 5,000 deliveries to it queued on the broker (5,000 tasks, enqueued on commit as usual)
        with transaction.atomic():
            for i in range(BACKLOG):
                dispatch(project_id=project.pk, event="flag.updated", payload={"flag": "tool_mode", "n": i})
        assert WebhookDelivery.objects.filter(status="pending").count() == BACKLOG
        # and a rollout plan running in production whose candidate will turn out twice as slow (in its
        # first stage: a breach rolls it back, the default choice's step back from there)
        plan = started_plan("production")
        RolloutPlan.objects.filter(pk=plan.pk).update(stage_entered_at=timezone.now() - datetime.timedelta(minutes=2))
        sdk_key = flag_services.sdk_key_create(
            environment=Environment.objects.get(project=project, key="production"), name="tests",
            actor=SystemActor("tests"))[1]
        variants = served(sdk_key)
        # and an approved escalation to be scheduled
        change_request = escalate()
        approving.change_request_approve(change_request=change_request, actor=user("pm"))
        approving.change_request_approve(change_request=change_request, actor=user("lead"))

        # When the workers run as deployed, one per queue (two processes deliver webhooks)
        env = worker_env(tmp_path, prefix, WEBHOOK_ALLOWED_NETWORKS="127.0.0.1/32",
                         SCHEDULED_CHANGES_SECONDS=str(SCHEDULER_SECONDS),
                         ROLLOUT_GUARDRAIL_CHECK_SECONDS=str(SWEEP_SECONDS),
                         TELEMETRY_AGGREGATE_SECONDS=str(AGGREGATE_SECONDS))
        workers = [start_worker(tmp_path, prefix, queues=["safety"], beat=True, name="safety", env=env),
                   start_worker(tmp_path, prefix, queues=["telemetry"], name="telemetry", env=env),
                   start_worker(tmp_path, prefix, queues=["notifications"], concurrency=2, name="notifications",
                                env=env),
                   start_worker(tmp_path, prefix, queues=["reminders"], name="reminders", env=env)]
        try:
            # and the deliveries are under way (the notifications worker is busy with the backlog)
            assert wait_for(lambda: len(receiver.received) >= 2, 60) is not None, "no delivery reached the receiver"
            # and then the request is scheduled three seconds ahead
            when = timezone.now() + datetime.timedelta(seconds=3)
            applying.change_request_schedule(change_request=change_request, when=when, actor=user("owner"))
            # and the applications report the candidate's latency at twice the baseline's
            post_cases(sdk_key, variants, {BASELINE: 400.0, CANDIDATE: 800.0})
            reported = time.monotonic()
            applied = wait_for(lambda: ChangeRequest.objects.get(pk=change_request.pk).status == "applied", 60)
            stopped = wait_for(lambda: RolloutPlan.objects.get(pk=plan.pk).status == "rolled_back",
                               60 - (time.monotonic() - reported))
            stopped_after = time.monotonic() - reported if stopped is not None else None
            still_pending = WebhookDelivery.objects.filter(status="pending").count()
        finally:
            output = "\n".join(stop_worker(worker) for worker in workers)
            delete_queues(prefix)

    # Then the scheduled request applied at its time: within one scheduler interval and a little
    assert applied is not None, output[-3000:]
    applied_at = AuditEvent.objects.get(action="change_request.applied", change_request_id=change_request.pk).created_at
    delay = (applied_at - when).total_seconds()
    record_property("scheduled_apply_delay_seconds", round(delay, 2))
    assert 0 <= delay <= SCHEDULER_SECONDS + 3, delay
    assert production().rules[-1]["serve"] == {"variation": "write"}
    # and the red guardrail rolled its plan back within an aggregation and a sweep (and a little)
    assert stopped_after is not None, output[-3000:]
    record_property("guardrail_rollback_after_report_seconds", round(stopped_after, 2))
    assert stopped_after <= AGGREGATE_SECONDS + SWEEP_SECONDS + 5, stopped_after
    assert served(sdk_key) == dict.fromkeys(variants, BASELINE)
    # while the backlog was still there: nearly all 5,000 deliveries were waiting
    record_property("deliveries_pending_meanwhile", still_pending)
    assert still_pending >= BACKLOG - 200, still_pending
