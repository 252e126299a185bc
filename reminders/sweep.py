"""The reminder sweep: decide what is due (reminders.due, plus change requests
waiting for approval), claim each (subject, kind, period) once, and deliver the claimed ones
in batches: in-app + email (notifications) and project webhooks.

Exactly once: every sweep inserts its candidates tagged with its own run id, and the unique
constraint lets only one insert of each reminder land; a run delivers only the rows carrying
its id, and delivery claims each row (delivered_at) before notifying. Two sweeps at the same
moment, or a retried delivery task, therefore never send a reminder twice.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Iterable

from django.conf import settings
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from flags.models import Flag
from flags.permissions import holders_of
from notifications.services import notify
from reminders.due import Due, due_flag_reminders
from reminders.models import Reminder
from rollouts.models import ChangeRequest
from webhooks.services import dispatch

logger = logging.getLogger(__name__)
Kind = Reminder.Kind
BATCH = 500


def due_change_request_reminders(*, now: datetime.datetime) -> list[Due]:
    """Pending requests waiting longer than FEATUREOPS_CHANGE_REQUEST_REMINDER_HOURS: one
    reminder per further day of waiting. One query."""
    threshold = datetime.timedelta(hours=settings.FEATUREOPS_CHANGE_REQUEST_REMINDER_HOURS)
    due = []
    for pk, project_id, created_at in ChangeRequest.objects.filter(
            status=ChangeRequest.Status.PENDING, created_at__lte=now - threshold).values_list(
            "pk", "project_id", "created_at"):
        days = int((now - created_at - threshold).total_seconds() // 86400)
        due.append(Due(project_id, Kind.CHANGE_REQUEST_WAITING, "change_request", pk, f"day{days}"))
    return due


def claim(dues: list[Due], *, now: datetime.datetime) -> tuple[str, list[int]]:
    """Insert the candidates under a fresh run id; the rows that carry it are this run's.
    On PostgreSQL one INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING, however many."""
    run = uuid.uuid4().hex
    if dues:
        if connection.vendor == "postgresql":
            table = Reminder._meta.db_table
            with connection.cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO {table} (project_id, kind, subject_type, subject_id, period, run, created_at) "  # noqa: S608 - our table name
                    "SELECT p, k, t, s, pe, %s, %s FROM unnest(%s::int[], %s::text[], %s::text[], %s::int[], "
                    "%s::text[]) AS u(p, k, t, s, pe) ON CONFLICT DO NOTHING",
                    [run, now, [d.project_id for d in dues], [d.kind for d in dues], [d.subject_type for d in dues],
                     [d.subject_id for d in dues], [d.period for d in dues]])
        else:
            Reminder.objects.bulk_create(
                [Reminder(project_id=d.project_id, kind=d.kind, subject_type=d.subject_type, subject_id=d.subject_id,
                          period=d.period, run=run, created_at=now) for d in dues],
                ignore_conflicts=True, batch_size=BATCH)
    return run, list(Reminder.objects.filter(run=run).values_list("pk", flat=True))


def sweep(*, now: datetime.datetime | None = None, enqueue: bool = True) -> list[int]:
    """Decide and claim what is due; enqueue delivery in batches (or leave it to the caller).
    Returns the ids this run claimed."""
    now = now or timezone.now()
    dues = due_flag_reminders(now=now) + due_change_request_reminders(now=now)
    _, ids = claim(dues, now=now)
    if enqueue:
        from reminders.tasks import deliver_reminders

        for start in range(0, len(ids), BATCH):
            batch = ids[start:start + BATCH]
            try:
                deliver_reminders.delay(batch)
            except Exception:  # noqa: BLE001 - the rows wait; `deliver_pending` picks them up
                logger.warning("could not enqueue reminder delivery; the next sweep delivers them", exc_info=True)
    return ids


def deliver_pending(*, older_than: datetime.timedelta = datetime.timedelta(minutes=5)) -> int:
    """Claimed rows whose delivery never ran (a lost task): delivered by the next sweep."""
    stuck = list(Reminder.objects.filter(delivered_at__isnull=True, created_at__lte=timezone.now() - older_than)
                 .values_list("pk", flat=True)[:10_000])
    return deliver(stuck)


# --- delivery ------------------------------------------------------------------------------


def _flag_words(kind: str, flag: Flag) -> tuple[str, str]:
    review = flag.review_date.isoformat() if flag.review_date else "—"
    titles = {
        Kind.REVIEW_IN_7_DAYS: (f"Review {flag.key} within a week (review date {review})",
                                "Check the evidence and decide: keep, promote, clean up, or set a new review date."),
        Kind.REVIEW_IN_1_DAY: (f"Review {flag.key} by tomorrow (review date {review})",
                               "The review date is tomorrow: decide what happens to this flag."),
        Kind.REVIEW_OVERDUE: (f"Review of {flag.key} is overdue (since {review})",
                              "Decide now: promote the winner and remove the branch, or set a new review date."),
        Kind.REVIEW_OVERDUE_ADMINS: (
            f"Review of {flag.key} overdue more than {settings.FEATUREOPS_OVERDUE_ADMIN_DAYS} days (since {review})",
            f"Owner: {flag.owner_label or 'none'}. As a project admin, make sure someone decides."),
        Kind.CLEANUP_CANDIDATE: (f"{flag.key} is ready for cleanup",
                                 f"Cleanup rule: {flag.cleanup_rule or '—'}"),
        Kind.STALE: (f"{flag.key} has not been evaluated for {settings.FEATUREOPS_STALE_AFTER_DAYS} days",
                     "No application asked for it lately: if it is no longer used, turn it off and archive it."),
    }
    return titles[kind]


def _recipients_for_flag(kind: str, flag: Flag) -> list:
    if kind == Kind.REVIEW_OVERDUE_ADMINS:
        return list(holders_of(flag.project, "manage_members"))
    if flag.owner_user_id and flag.owner_user.is_active:
        return [flag.owner_user]
    return list(holders_of(flag.project, "edit_catalog"))  # no owner: the editors


def deliver(ids: Iterable[int]) -> int:
    """Deliver claimed reminders: each row is claimed (delivered_at) in its own transaction
    with its notifications and webhook deliveries, so a retried batch skips what is done."""
    sent = 0
    for pk in ids:
        with transaction.atomic():
            if not Reminder.objects.filter(pk=pk, delivered_at__isnull=True).update(delivered_at=timezone.now()):
                continue  # delivered by another run of this task
            sent += _deliver_one(Reminder.objects.select_related("project").get(pk=pk))
    return sent


def _deliver_one(reminder: Reminder) -> int:
    project = reminder.project
    if reminder.subject_type == "change_request":
        change_request = (ChangeRequest.objects.filter(pk=reminder.subject_id)
                          .select_related("flag", "segment", "environment", "project").first())
        if change_request is None or change_request.status != ChangeRequest.Status.PENDING:
            return 0
        hours = int((timezone.now() - change_request.created_at).total_seconds() // 3600)
        title = f"CR-{change_request.pk} ({change_request.subject} in {change_request.where}) waits for approval"
        body = f"Waiting {hours} hours. {change_request.requester_label} asks: {change_request.reason}"
        url = reverse("rollouts:change_request", kwargs={"project_key": project.key, "pk": change_request.pk})
        recipients = [u for u in holders_of(project, "approve_change") if u.pk != change_request.requester_id]
        subject = {"change_request": change_request.pk, "subject": change_request.subject,
                   "flag": change_request.flag.key if change_request.flag_id else None}
    else:
        flag = Flag.objects.filter(pk=reminder.subject_id).select_related("project", "owner_user").first()
        if flag is None:
            return 0
        title, body = _flag_words(reminder.kind, flag)
        url = reverse("flags:flag_detail", kwargs={"project_key": project.key, "flag_key": flag.key})
        recipients = _recipients_for_flag(reminder.kind, flag)
        subject = {"flag": flag.key, "review_date": flag.review_date.isoformat() if flag.review_date else None}
    notify(recipients=recipients, kind=f"reminder.{reminder.kind}", title=title, body=body, url=url)
    _webhook(project.pk, reminder, {"title": title, "body": body, "url": url, **subject})
    return 1


def _webhook(project_id: int, reminder: Reminder, data: dict) -> None:
    dispatch(project_id=project_id, event=f"reminder.{reminder.kind}",
             payload={"kind": reminder.kind, "period": reminder.period, **data})
