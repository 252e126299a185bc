"""Reminders through the real machinery: a Celery worker with embedded beat, in its own
process, on the configured broker, with two worker processes so sweeps overlap — and the
test sending extra sweeps at the same moment. Each reminder email arrives exactly once."""

from __future__ import annotations

import email
import time
from pathlib import Path

import pytest

from featureops_site.celery import app as celery_app
from flags.demo import seed_demo
from notifications.models import Notification
from reminders.models import Reminder
from tests.workers import require_broker, start_worker, stop_worker, unique_prefix, worker_env


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
    require_broker()
    # Given the demo (an overdue review, a review due within a week), committed
    seed_demo()
    prefix = unique_prefix("reminders")
    mail_dir = tmp_path / "mail"
    # When workers run as deployed: beat sends a sweep every second to the reminders queue (two
    # processes take them); the emails they cause go out through the notifications queue
    env = worker_env(tmp_path, prefix, FEATUREOPS_REMINDER_SWEEP_SECONDS="1")
    worker = start_worker(tmp_path, prefix, queues=["reminders", "notifications"], beat=True, concurrency=2, env=env)
    try:
        # and the test sends two more sweeps at the same moment
        for _ in range(2):
            celery_app.send_task("reminders.tasks.send_reminders", queue=f"{prefix}reminders")
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
        output = stop_worker(worker, prefix)
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
