"""Notification emails: sent once per row however often the tasks run, retried by the beat
sweep after a failure; inline in unit tests, and once through a real worker and broker."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from smtplib import SMTPServerDisconnected
from typing import Any

import pytest
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.utils import timezone

from featureops_site.celery import app as celery_app
from notifications import services, tasks
from notifications.models import Notification
from tests.concurrency import run_together
from tests.workers import require_broker, routed_with_prefix, unique_prefix


class RefusingBackend(BaseEmailBackend):
    """An SMTP server that hangs up on every message."""

    def send_messages(self, email_messages: Any) -> int:
        raise SMTPServerDisconnected("Connection unexpectedly closed")


def _notify(*recipients: Any, **extra: Any) -> list[Notification]:
    spec = {"kind": "change_request.waiting", "title": "Change request #3 waits for you",
            "body": "Alice asks to widen tool_mode in production.", "url": "/p/x/changes/3/"}
    spec.update(extra)
    return services.notify(recipients=list(recipients), **spec)


@pytest.mark.django_db
def test_email_task__runs_twice__each_email_arrives_once(
    make_user: Callable[..., Any], eager_celery: None, mailoutbox: list[Any], settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    # Given the console's public address and two recipients with email addresses
    settings.CONSOLE_BASE_URL = "https://featureops.example.com/"
    alice, bob = make_user(email="alice@example.com"), make_user(email="bob@example.com")
    # When a change notifies them and commits (the task runs inline), and the task then runs again
    with django_capture_on_commit_callbacks(execute=True):
        created = _notify(alice, bob)
    ids = [n.pk for n in created]
    assert tasks.send_notification_emails(ids) == 0
    # Then each of them got exactly one email with the title, the body and an absolute link
    assert sorted(m.to[0] for m in mailoutbox) == ["alice@example.com", "bob@example.com"]
    message = mailoutbox[0]
    assert message.subject == "[FeatureOps] Change request #3 waits for you"
    assert message.body == ("Alice asks to widen tool_mode in production.\n\n"
                            "https://featureops.example.com/p/x/changes/3/")
    assert Notification.objects.filter(pk__in=ids, emailed_at__isnull=True).count() == 0


@pytest.mark.django_db
def test_email_task__sweep_after_the_task__sends_nothing_more(
    make_user: Callable[..., Any], eager_celery: None, mailoutbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    # Given a notification already emailed by its on-commit task
    with django_capture_on_commit_callbacks(execute=True):
        _notify(make_user(email="alice@example.com"))
    assert len(mailoutbox) == 1
    # When the beat sweep runs
    sent = tasks.send_pending_notification_emails()
    # Then it finds nothing left to send
    assert sent == 0
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_send_one__stale_copy_after_another_run_claimed__not_sent_again(
    make_user: Callable[..., Any], mailoutbox: list[Any]
) -> None:
    # Given two runs that loaded the same unsent row before either claimed it
    (notification,) = _notify(make_user(email="alice@example.com"))
    first_copy = Notification.objects.select_related("recipient").get(pk=notification.pk)
    second_copy = Notification.objects.select_related("recipient").get(pk=notification.pk)
    # When both try to send it
    backend = mail.get_connection()
    results = [services._send_one(first_copy, backend), services._send_one(second_copy, backend)]
    # Then only the run whose conditional UPDATE claimed the row sent it
    assert results == [True, False]
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_send_emails__recipient_without_email__marked_done_and_nothing_sent(
    make_user: Callable[..., Any], mailoutbox: list[Any]
) -> None:
    # Given a notification for someone with no email address
    (notification,) = _notify(make_user(email=""))
    # When its emails are sent
    sent = tasks.send_notification_emails([notification.pk])
    # Then nothing is sent and the sweep will not look at it again
    assert sent == 0
    assert mailoutbox == []
    notification.refresh_from_db()
    assert notification.emailed_at is not None


@pytest.mark.django_db
def test_send_emails__smtp_hangs_up__claim_returned_and_the_sweep_sends_it(
    make_user: Callable[..., Any], mailoutbox: list[Any], settings: Any
) -> None:
    # Given a mail server that hangs up
    settings.EMAIL_BACKEND = f"{__name__}.RefusingBackend"
    (notification,) = _notify(make_user(email="alice@example.com"))
    # When the task tries to send
    sent = tasks.send_notification_emails([notification.pk])
    # Then nothing raised, nothing was sent, and the row is unsent again
    assert sent == 0
    notification.refresh_from_db()
    assert notification.emailed_at is None
    # And once the server is back, the sweep sends it once
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert tasks.send_pending_notification_emails() == 1
    assert tasks.send_pending_notification_emails() == 0
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_sweep__unsent_rows__recent_ones_sent_day_old_ones_left(
    make_user: Callable[..., Any], mailoutbox: list[Any]
) -> None:
    # Given two unsent notifications (their task never ran), one of them two days old
    user = make_user(email="alice@example.com")
    (recent,) = _notify(user, title="recent")
    (stale,) = _notify(user, title="stale")
    Notification.objects.filter(pk=stale.pk).update(created_at=timezone.now() - datetime.timedelta(days=2))
    # When the sweep runs
    sent = tasks.send_pending_notification_emails()
    # Then only the recent one is emailed; the stale one stays in the inbox, unsent
    assert sent == 1
    assert [m.subject for m in mailoutbox] == ["[FeatureOps] recent"]
    stale.refresh_from_db()
    assert stale.emailed_at is None


def test_beat_schedule__email_sweep__every_minute_and_registered(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["send-pending-notification-emails"]
    assert entry["schedule"] == datetime.timedelta(seconds=60)
    assert entry["task"] == tasks.send_pending_notification_emails.name
    assert tasks.send_pending_notification_emails.name in celery_app.tasks
    assert tasks.send_notification_emails.name in celery_app.tasks


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_send_emails__concurrent_runs_over_the_same_rows__each_email_once(
    make_user: Callable[..., Any], mailoutbox: list[Any]
) -> None:
    # Given twenty unsent notifications
    recipients = [make_user(email=f"user{i}@example.com") for i in range(20)]
    ids = [n.pk for n in _notify(*recipients)]
    # When four workers send the same ids at the same moment
    def send() -> None:
        services.send_emails(notification_ids=ids)

    _, errors = run_together(send, send, send, send, timeout=60)
    # Then every recipient got exactly one email
    assert errors == []
    assert sorted(m.to[0] for m in mailoutbox) == sorted(r.email for r in recipients)
    assert Notification.objects.filter(pk__in=ids, emailed_at__isnull=True).count() == 0


def _wait_for_email(mailoutbox: list[Any], address: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not any(address in m.to for m in mailoutbox):
        time.sleep(0.1)


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_notify__real_worker_and_broker__email_arrives_once_even_when_redelivered(
    make_user: Callable[..., Any], mailoutbox: list[Any]
) -> None:
    from celery.contrib.testing.worker import start_worker

    require_broker()
    # Given two recipients, and queues of this test's own, so that no other consumer of the
    # broker can take the messages notify() sends
    alice, bob = make_user(email="alice@example.com"), make_user(email="bob@example.com")
    prefix = unique_prefix("notifications")
    queue = f"{prefix}notifications"
    with routed_with_prefix(prefix):
        # When a change notifies alice and commits (no test transaction: on_commit is real)
        (for_alice,) = _notify(alice)
        # And the broker holds her task a second time (a redelivery)
        tasks.send_notification_emails.apply_async(([for_alice.pk],), queue=queue)
        # And a later change notifies bob
        time.sleep(0.01)  # the filesystem transport orders messages by millisecond
        _notify(bob)
        # And then a worker consumes the queue. The messages are all in place first: kombu's
        # filesystem transport (the default broker) creates a message file before writing it,
        # and a consumer polling meanwhile can take it empty.
        # One solo worker takes one FIFO queue in order, so bob's email means both of alice's
        # tasks have run.
        with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10, queues=[queue]):
            _wait_for_email(mailoutbox, "bob@example.com")
    # Then the worker emailed each of them exactly once
    assert [m.to for m in mailoutbox] == [["alice@example.com"], ["bob@example.com"]]
    for_alice.refresh_from_db()
    assert for_alice.emailed_at is not None
