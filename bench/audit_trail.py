"""Audit trail benchmark on PostgreSQL with 1,000,000 events: filtered explorer pages (server
time, p95), a full export's peak memory, and verify_audit's duration.
Goals: any filtered page under 100 ms p95; export of all rows under 150 MB peak; verify under 60 s.

    python bench/audit_trail.py     # BENCH_AUDIT_DATABASE_URL, default .../featureops_bench_audit
"""

from __future__ import annotations

import datetime
import os
import random
import statistics
import subprocess
import sys
import time
import uuid

from _database import ROOT, use_database

DATABASE_URL = use_database("BENCH_AUDIT_DATABASE_URL", "featureops_bench_audit", test_client=True)
ROWS = int(os.environ.get("BENCH_AUDIT_ROWS", "1000000"))
WORDS = ("latency", "citation", "rollback", "incident", "beta", "prompt", "retrieval", "guardrail", "escalation",
         "budget", "tooling", "refusal", "handover", "canary", "holdout", "drift")


def prepare() -> None:
    import _setup  # noqa: F401 - Django set up on the bench database (DATABASE_URL above)

    _setup.create_database(DATABASE_URL)


def populate() -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from audit.chain import GENESIS, HASHED_FIELDS, canonical_json, row_hash
    from audit.constants import AuditAction
    from audit.models import AuditEvent
    from audit.services import SystemActor
    from flags import services
    from flags.constants import Role
    from flags.demo import seed_demo
    from flags.models import Project

    if AuditEvent.objects.count() >= ROWS:
        return
    if AuditEvent.objects.exists():
        sys.exit("The bench database holds a partial trail; drop it and run again.")
    actor = SystemActor("bench")
    project, _ = seed_demo()
    projects = [project] + [Project.objects.filter(key=f"bench-{n}").first()
                            or services.project_create(key=f"bench-{n}", name=f"Bench {n}", actor=actor)
                            for n in range(9)]
    auditor = get_user_model().objects.get(username="auditor")
    for p in projects:
        services.membership_grant(project=p, user=auditor, role=Role.AUDITOR, actor=actor)
    users = list(get_user_model().objects.all())
    start_id = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    prev = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first() or GENESIS
    rng = random.Random(42)
    actions = [a for a in AuditAction.values if not a.startswith("auth.")]
    now = datetime.datetime.now(datetime.UTC)
    columns = ("id", *HASHED_FIELDS, "prev_hash", "hash")
    print(f"generating {ROWS:,} chained events…", flush=True)
    started = time.monotonic()
    remaining = ROWS - AuditEvent.objects.count()
    with connection.cursor() as cursor, cursor.connection.cursor().copy(
            f"COPY audit_auditevent ({', '.join(columns)}) FROM STDIN") as copy:
        for n in range(remaining):
            p = projects[rng.randrange(len(projects))]
            user = users[rng.randrange(len(users))]
            system = rng.random() < 0.2
            flag_id = rng.randrange(1, 400)
            action = actions[rng.randrange(len(actions))]
            words = " ".join(rng.sample(WORDS, 3))
            values = {
                "created_at": now - datetime.timedelta(seconds=(remaining - n) * 30),
                "actor_id": None if system else user.pk, "actor_label": "system:bench" if system else user.username,
                "actor_kind": "system" if system else "user", "action": action, "target_type": "flags.flag",
                "target_id": str(flag_id), "target_label": f"flag_{flag_id}", "project_id": p.pk,
                "project_label": p.name, "environment_id": rng.randrange(1, 30), "environment_label": "production",
                "flag_id": flag_id, "before": {"owner_team": f"team-{n % 97}", "value": {"temperature": 0.2}},
                "after": {"owner_team": f"team-{(n + 1) % 97}", "value": {"temperature": 0.3}},
                "summary": f"Changed owner_team of flag_{flag_id}: {words}",
                "reason": f"Ticket {n % 5000}: {rng.choice(WORDS)}" if rng.random() < 0.3 else "",
                "correlation_id": uuid.UUID(int=rng.getrandbits(128)), "request_ip": "10.0.0.1",
                "user_agent": "bench", "change_request_id": None,
            }
            digest = row_hash(values, prev)
            row = [start_id + n + 1]
            for name in HASHED_FIELDS:
                value = values[name]
                row.append(canonical_json(value) if name in ("before", "after") else value)
            copy.write_row([*row, prev, digest])
            prev = digest
    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence('audit_auditevent', 'id'), "
                       "(SELECT max(id) FROM audit_auditevent))")
        cursor.execute("ANALYZE audit_auditevent")
    print(f"generated in {time.monotonic() - started:.0f} s", flush=True)


def page_times() -> dict[str, float]:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from audit.models import AuditEvent
    from flags.models import Project

    client = Client()
    auditor = get_user_model().objects.get(username="auditor")
    client.force_login(auditor)
    project = Project.objects.get(key="support-assistant")
    owner = get_user_model().objects.get(username="owner")
    middle = AuditEvent.objects.order_by("-id").values_list("id", flat=True)[ROWS // 2]
    today = datetime.datetime.now(datetime.UTC).date()
    urls = {
        "no filter": "/audit/",
        "project": f"/audit/?project={project.pk}",
        "environment": "/audit/?environment=7",
        "flag": "/audit/?flag=123",
        "actor": f"/audit/?actor={owner.pk}",
        "system actor": "/audit/?actor=system",
        "action": "/audit/?action=variation.updated",
        "date range (one week, 6 months ago)":
            f"/audit/?from={today - datetime.timedelta(days=187)}&to={today - datetime.timedelta(days=180)}",
        "text, common word": "/audit/?q=latency",
        "text, rare (ticket number)": "/audit/?q=Ticket%204242:",
        "flag + actor + action": f"/audit/?flag=42&actor={owner.pk}&action=flag.updated",
        "project + text + date": f"/audit/?project={project.pk}&q=rollback&from={today - datetime.timedelta(days=60)}",
        "deep page (keyset)": f"/audit/?before={middle}",
        "flag History tab": f"/p/{project.key}/flags/support_assistant_profile/history/",
    }
    results = {}
    for label, url in urls.items():
        client.get(url)  # warm
        samples = []
        for _ in range(20):
            started = time.perf_counter()
            response = client.get(url)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        samples.sort()
        results[label] = samples[int(0.95 * (len(samples) - 1))]
    return results


EXPORT_CHILD = """
import os, resource, sys, time
sys.path.insert(0, {root!r})
os.environ["DATABASE_URL"] = {url!r}; os.environ.setdefault("DJANGO_SETTINGS_MODULE", "featureops_site.settings")
os.environ.setdefault("DEBUG", "1"); os.environ.setdefault("ALLOWED_HOSTS", "testserver")
import django; django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
client = Client(); client.force_login(get_user_model().objects.get(username="auditor"))
started = time.monotonic(); size = 0
response = client.get("/audit/export.{fmt}")
for chunk in response.streaming_content:
    size += len(chunk)
print(size, time.monotonic() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def export_memory(fmt: str) -> tuple[int, float, float]:
    code = EXPORT_CHILD.format(root=str(ROOT), url=DATABASE_URL, fmt=fmt)
    out = subprocess.run([sys.executable, "-c", code]  # noqa: S603 - our own child script
                         , capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), float(out[1]), int(out[2]) / 1024


def main() -> None:
    prepare()
    populate()
    from audit.verify import verify_chain

    pages = page_times()
    size, seconds, peak_mb = export_memory("csv")
    jsonl_size, jsonl_seconds, jsonl_peak_mb = export_memory("jsonl")
    started = time.monotonic()
    report = verify_chain()
    verify_seconds = time.monotonic() - started
    print(f"\n{report.rows:,} audit events on PostgreSQL; {os.cpu_count()} cores")
    print("explorer page, server time p95 (20 requests each):")
    for label, p95 in pages.items():
        print(f"  {label:<40} {p95:7.1f} ms")
    print(f"  worst: {max(pages.values()):.1f} ms; median of p95s: {statistics.median(pages.values()):.1f} ms (goal < 100 ms)")
    print(f"export CSV of every row: {size / 1e6:.0f} MB in {seconds:.0f} s, peak RSS {peak_mb:.0f} MB (goal < 150 MB)")
    print(f"export JSONL of every row: {jsonl_size / 1e6:.0f} MB in {jsonl_seconds:.0f} s, peak RSS {jsonl_peak_mb:.0f} MB")
    print(f"verify_audit: {'intact' if report.ok else 'BROKEN at #' + str(report.bad_id)}, {verify_seconds:.1f} s (goal < 60 s)")


if __name__ == "__main__":
    main()
