"""Reminder sweep benchmark. Goal: with 100,000 flags, reminders decided and enqueued in under
10 s, with a number of queries that does not grow with the number of flags.

Builds (once) a PostgreSQL database with one project and N flags whose review dates, serving
state and last evaluations spread over every reminder kind, then times `reminders.sweep.sweep`
(decide + claim + enqueue to the broker) at 10,000 and at 100,000 flags, counting queries.
Delivery (the notification and email per reminder) is the workers' job and is not timed here.

    python bench/reminders.py   # BENCH_REMINDERS_DATABASE_URL, default .../featureops_bench_reminders;
                                # CELERY_BROKER_URL, default redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import datetime
import os
import statistics
import time
import uuid

from _database import use_database

DATABASE_URL = use_database("BENCH_REMINDERS_DATABASE_URL", "featureops_bench_reminders")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# Queues nobody consumes (a prefix of its own): the benchmark measures enqueueing, then purges.
PREFIX = f"bench-reminders-{uuid.uuid4().hex[:8]}."
os.environ["CELERY_QUEUE_PREFIX"] = PREFIX
QUEUE = f"{PREFIX}reminders"
SIZES = [int(n) for n in os.environ.get("BENCH_REMINDER_SIZES", "10000,100000").split(",")]
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def build(total: int) -> None:
    """Flags 0..total-1 (adds what is missing). Every 7th is on in production and never
    evaluated (stale), review dates cycle over -30..+30 days, a few are due for cleanup."""
    from django.utils import timezone

    from audit.services import SystemActor
    from flags import services
    from flags.constants import BehaviorSurface, LifecycleStage, Lifetime, ValueType
    from flags.models import Environment, Flag, Project, Targeting

    actor = SystemActor("bench")
    project = Project.objects.filter(key="bench").first()
    if project is None:
        project = services.project_create(key="bench", name="Bench", actor=actor)
        services.environment_create(project=project, key="production", name="Production", is_governed=True,
                                    actor=actor)
    production = Environment.objects.get(project=project, key="production")
    have = Flag.objects.filter(project=project).count()
    if have >= total:
        return
    today = timezone.localdate()
    old = timezone.now() - datetime.timedelta(days=90)
    batch = 5000
    for start in range(have, total, batch):
        flags = [Flag(project=project, key=f"flag_{n:06d}", name=f"Flag {n}", value_type=ValueType.BOOLEAN,
                      behavior_surface=BehaviorSurface.OTHER, lifetime=Lifetime.RELEASE,
                      review_date=today + datetime.timedelta(days=(n % 61) - 30), owner_team="bench",
                      stage=LifecycleStage.CLEANUP_DUE if n % 11 == 0 else LifecycleStage.ACTIVE)
                 for n in range(start, min(total, start + batch))]
        Flag.objects.bulk_create(flags, batch_size=batch)
        created = Flag.objects.filter(project=project, key__in=[f.key for f in flags]).values_list("pk", "key")
        Targeting.objects.bulk_create(
            [Targeting(flag_id=pk, environment=production, enabled=int(key[5:]) % 7 == 0, assignment_unit="userId",
                       default_serve={"variation": "off"}) for pk, key in created], batch_size=batch)
    Flag.objects.filter(project=project).update(created_at=old)


def main() -> None:
    import _setup

    _setup.create_database(DATABASE_URL)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from featureops_site.celery import app as celery_app
    from flags.models import Flag
    from reminders.models import Reminder
    from reminders.sweep import sweep

    print(f"machine: {_setup.machine()}; PostgreSQL; broker {celery_app.conf.broker_url}")
    results = {}
    for size in SIZES:
        started = time.perf_counter()
        build(size)
        Flag.objects.filter(project__key="bench", key__gte=f"flag_{size:06d}").update(stage="archived")
        Flag.objects.filter(project__key="bench", key__lt=f"flag_{size:06d}").exclude(
            stage="cleanup_due").update(stage="active")
        print(f"{size:>7,} flags ready in {time.perf_counter() - started:.1f} s")
        timings, queries, claimed = [], 0, 0
        for _ in range(RUNS):
            Reminder.objects.all().delete()
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                claimed = len(sweep())
                timings.append(time.perf_counter() - started)
            queries = len(captured.captured_queries)
        with celery_app.connection_for_write() as conn:
            conn.default_channel.queue_purge(QUEUE)
        results[size] = (statistics.median(timings), queries, claimed)
        print(f"{size:>7,} flags: {claimed:,} reminders decided, claimed and enqueued; "
              f"median {statistics.median(timings):.2f} s over {RUNS} runs; {queries} queries")
    sizes = sorted(results)
    largest = results[sizes[-1]]
    print(f"goal: < 10 s at 100,000 flags -> {largest[0]:.2f} s ({'met' if largest[0] < 10 else 'NOT met'})")
    same = len({results[s][1] for s in sizes}) == 1
    print(f"queries at {', '.join(f'{s:,}' for s in sizes)} flags: "
          f"{', '.join(str(results[s][1]) for s in sizes)} ({'constant' if same else 'GROWING'})")
    Reminder.objects.all().delete()


if __name__ == "__main__":
    main()
