"""Writes: create notifications, mark them read, send their emails.

Notifications are a side effect of a governed change, never the record of it: the caller's
audit row is. `notify` runs inside the caller's transaction (a rolled-back change leaves no
notification) and hands the emails to Celery only after commit. Whatever goes wrong on the
email path (broker down, SMTP refusing) is logged and retried by the sweep; it never reaches
the caller's request.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable
from functools import partial

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.db import models, transaction
from django.db.models.functions import Coalesce, Concat
from django.utils import timezone
from django.utils.text import Truncator

from notifications.models import TITLE_MAX_LENGTH, Notification, kind_validator

logger = logging.getLogger(__name__)

SUBJECT_PREFIX = "[FeatureOps] "
# The sweep gives up on rows older than this: after a long mail outage, day-old news would
# arrive as a flood of stale emails. They stay in the inbox either way.
PENDING_EMAIL_MAX_AGE = datetime.timedelta(days=1)
SWEEP_BATCH_SIZE = 500


def _one_line(text: str) -> str:
    # Titles become email subjects: a newline there is a header injection (Django refuses it).
    return " ".join(text.split())


def notify(
    *,
    recipients: Iterable[AbstractBaseUser | None],
    kind: str,
    title: str,
    body: str = "",
    url: str = "",
) -> list[Notification]:
    """Put one notification in each recipient's inbox and email it after commit.

    Recipients are deduplicated by pk; None, unsaved and inactive users are skipped. `kind` is
    a lowercase code (`change_request.waiting`), `url` a path inside the console. Wrong
    arguments are the caller's bug and raise ValidationError; a long title is shortened.
    """
    unique: dict[int, AbstractBaseUser] = {}
    for user in recipients:
        if user is not None and user.pk is not None and user.is_active:
            unique.setdefault(user.pk, user)
    if not unique:
        return []
    title = Truncator(_one_line(title)).chars(TITLE_MAX_LENGTH)
    notifications = [
        Notification(recipient=user, kind=kind, title=title, body=body, url=url) for user in unique.values()
    ]
    for notification in notifications:
        notification.full_clean(exclude=["recipient"])  # the recipients were just loaded: no query per row
    created = Notification.objects.bulk_create(notifications)
    transaction.on_commit(partial(_enqueue_emails, [n.pk for n in created]), robust=True)
    return created


def settle(*, url: str, kinds: Iterable[str], settled_kind: str, title: str, note: str) -> int:
    """Notifications of `kinds` about `url` asked their recipients to act (approve a change
    request, say), and that is settled now: cancelled, rejected, applied. Each one says so:
    `title` ("Cancelled by pm: CR-12 … no approval needed") replaces its title, `note` comes
    first in its body (what it said follows), its kind becomes `settled_kind` (so it is
    settled once), and it no longer counts as unread. One UPDATE; returns how many rows
    changed. No email: the person was told of the request, the requester hears of the end."""
    kind_validator(settled_kind)
    title = Truncator(_one_line(title)).chars(TITLE_MAX_LENGTH)
    return Notification.objects.filter(url=url, kind__in=list(kinds)).update(
        kind=settled_kind, title=title,
        body=Concat(models.Value(f"{note}\n\n"), "body", output_field=models.TextField()),
        read_at=Coalesce("read_at", models.Value(timezone.now()), output_field=models.DateTimeField()),
    )


def _enqueue_emails(notification_ids: list[int]) -> None:
    # Imported here: the task module imports this one.
    from notifications.tasks import send_notification_emails

    try:
        send_notification_emails.delay(notification_ids)
    except Exception:
        # The broker is unreachable. The rows keep emailed_at NULL and the sweep sends them.
        logger.warning("Could not enqueue emails for notifications %s; the sweep will retry.",
                       notification_ids, exc_info=True)


def mark_read(*, user: AbstractBaseUser | AnonymousUser, notification_ids: list[int] | None = None) -> int:
    """Mark the user's own unread notifications read (all of them when ids is None).

    Ids of other people's notifications are ignored. Returns how many rows changed.
    """
    if not user.is_authenticated:
        return 0
    unread = Notification.objects.filter(recipient=user, read_at__isnull=True)
    if notification_ids is not None:
        unread = unread.filter(pk__in=notification_ids)
    return unread.update(read_at=timezone.now())


def send_emails(*, notification_ids: Iterable[int]) -> int:
    """Email each of these notifications that has not been emailed yet. Returns how many were sent.

    Idempotent: each row is claimed with a conditional UPDATE (emailed_at NULL → now) before
    its email is sent, so two runs over the same ids (the on-commit task and the sweep, or a
    redelivered task) never send twice. Recipients without an email address, or no longer
    active, are claimed and get nothing: emailed_at means "the email step is done". A send
    that fails hands its claim back so the sweep retries it. A worker killed between claim
    and send loses that one email; the notification stays in the inbox (at most once).
    """
    pending = (
        Notification.objects.filter(pk__in=[int(pk) for pk in notification_ids], emailed_at__isnull=True)
        .select_related("recipient")
        .order_by("pk")
    )
    sent = 0
    connection = mail.get_connection()
    try:
        for notification in pending:
            sent += _send_one(notification, connection)
    finally:
        connection.close()
    return sent


def _send_one(notification: Notification, connection: BaseEmailBackend) -> bool:
    claimed_at = timezone.now()
    claimed = Notification.objects.filter(pk=notification.pk, emailed_at__isnull=True).update(emailed_at=claimed_at)
    if not claimed:
        return False  # another run has it
    recipient = notification.recipient
    if not (recipient.is_active and recipient.email):
        return False  # nothing to send; the row stays claimed
    link = settings.CONSOLE_BASE_URL.rstrip("/") + notification.url if notification.url else ""
    message = mail.EmailMessage(
        subject=SUBJECT_PREFIX + _one_line(notification.title),
        body="\n\n".join(part for part in (notification.body, link) if part),
        to=[recipient.email],
        connection=connection,
    )
    try:
        message.send()
    except Exception:
        logger.exception("Email for notification %s failed; the sweep will retry.", notification.pk)
        Notification.objects.filter(pk=notification.pk, emailed_at=claimed_at).update(emailed_at=None)
        return False
    return True


def send_pending_emails(*, max_age: datetime.timedelta = PENDING_EMAIL_MAX_AGE) -> int:
    """The sweep: email every unsent notification created within max_age. Returns how many were sent."""
    unsent = Notification.objects.filter(emailed_at__isnull=True, created_at__gte=timezone.now() - max_age)
    sent = 0
    after = 0
    # Keyset batches: a failed send returns its row to NULL, so re-querying from the start
    # could loop on it.
    while ids := list(unsent.filter(pk__gt=after).order_by("pk").values_list("pk", flat=True)[:SWEEP_BATCH_SIZE]):
        sent += send_emails(notification_ids=ids)
        after = ids[-1]
    return sent
