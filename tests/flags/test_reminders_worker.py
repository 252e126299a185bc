"""Reminders through the real machinery: a Celery worker with embedded beat, in its own
process, on the configured broker, with two worker processes so sweeps overlap — and the
test sending extra sweeps at the same moment. Each reminder email arrives exactly once."""

from __future__ import annotations

import email
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from featureops_site.celery import app as celery_app
from flags.demo import seed_demo
from flags.models import Reminder
from notifications.models import Notification
from tests.conftest import missing_service


def _emails(folder: Path) -> list[email.message.Message]:
    messages = []
    for path in folder.glob("*.log"):
        for chunk in path.read_text().split("-" * 79):
            if chunk.strip():
                messages.append(email.message_from_string(chunk.strip()))
    return messages


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_reminders__worker_with_beat_and_overlapping_sweeps__each_email_once(tmp_path: Path) -> None:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the broker means it is absent
        missing_service(f"the Celery broker {celery_app.conf.broker_url} is unreachable: {exc}")
    # Given the demo (an overdue review, a review due within a week), committed
    seed_demo()
    database = connection.settings_dict
    queue = f"test-reminders-{uuid.uuid4().hex[:12]}"
    mail_dir = tmp_path / "mail"
    env = {
        **os.environ, "DEBUG": "0", "SECRET_KEY": "test-worker", "ALLOWED_HOSTS": "localhost",
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST'] or '127.0.0.1'}:{database['PORT'] or 5432}/"
                        f"{database['NAME']}",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL, "CELERY_TASK_DEFAULT_QUEUE": queue,
        "EMAIL_BACKEND": "file", "EMAIL_FILE_PATH": str(mail_dir), "FEATUREOPS_VAR_DIR": str(tmp_path),
        "FEATUREOPS_REMINDER_SWEEP_SECONDS": "1",
    }
    # When a worker with beat runs (beat sends a sweep every second, two processes take them)
    worker = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-m", "celery", "-A", "featureops_site", "worker", "-B", "-Q", queue, "-c", "2",
         "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "WARNING",
         "-s", str(tmp_path / "beat-schedule")],
        env=env, cwd=settings.BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # and the test sends two more sweeps at the same moment
        for _ in range(2):
            celery_app.send_task("rollouts.tasks.send_reminders", queue=queue)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = (Reminder.objects.exists() and not Reminder.objects.filter(delivered_at__isnull=True).exists()
                    and Notification.objects.filter(kind__startswith="reminder.").exists()
                    and not Notification.objects.filter(kind__startswith="reminder.", emailed_at__isnull=True).exists())
            if done:
                break
            time.sleep(0.3)
        time.sleep(4)  # a few more beat ticks and overlapping sweeps
    finally:
        worker.terminate()
        output = worker.communicate(timeout=30)[0].decode(errors="replace")
    # Then every reminder was delivered, and each email arrived exactly once
    assert Reminder.objects.exists(), output[-3000:]
    assert not Reminder.objects.filter(delivered_at__isnull=True).exists(), output[-3000:]
    reminders = Notification.objects.filter(kind__startswith="reminder.").select_related("recipient")
    expected = sorted((n.recipient.email, " ".join(f"[FeatureOps] {n.title}".split()))
                      for n in reminders if n.recipient.email)
    received = sorted((m["To"], " ".join(str(email.header.make_header(email.header.decode_header(m["Subject"])))
                                         .split())) for m in _emails(mail_dir))
    assert received == expected, output[-3000:]
    assert len(received) == len(set(received))
    overdue = [subject for _, subject in received if "support_assistant_profile is overdue" in subject]
    assert overdue, received
