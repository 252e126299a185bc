"""Reminders: which are due (review dates in the project's time zone, overdue weekly and to
admins, cleanup candidates, stale flags, waiting change requests), each sent once per
(subject, kind, period) however many sweeps run, delivered in-app, by email and to webhooks."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command
from django.utils import timezone

from flags import services
from flags.demo import seed_demo
from flags.models import EvaluationRecord, Flag, Project
from notifications.models import Notification
from reminders import sweep as reminders
from reminders.due import due_flag_reminders, review_reminders
from reminders.models import Reminder
from tests.factories import TEST_ACTOR, make_project, make_string_flag

Kind = Reminder.Kind
D = datetime.date


@pytest.mark.parametrize(("days_left", "expected"), [
    (8, []),
    (7, [(Kind.REVIEW_IN_7_DAYS, "2026-12-01")]),
    (2, [(Kind.REVIEW_IN_7_DAYS, "2026-12-01")]),
    (1, [(Kind.REVIEW_IN_1_DAY, "2026-12-01")]),
    (0, [(Kind.REVIEW_IN_1_DAY, "2026-12-01")]),
    (-1, [(Kind.REVIEW_OVERDUE, "2026-12-01/w0")]),
    (-7, [(Kind.REVIEW_OVERDUE, "2026-12-01/w0")]),
    (-8, [(Kind.REVIEW_OVERDUE, "2026-12-01/w1")]),
    (-15, [(Kind.REVIEW_OVERDUE, "2026-12-01/w2"), (Kind.REVIEW_OVERDUE_ADMINS, "2026-12-01/w0")]),
    (-22, [(Kind.REVIEW_OVERDUE, "2026-12-01/w3"), (Kind.REVIEW_OVERDUE_ADMINS, "2026-12-01/w1")]),
])
def test_review_reminders__windows_and_weekly_periods(days_left: int, expected: list) -> None:
    review = D(2026, 12, 1)
    assert list(review_reminders(review_date=review, today=review - datetime.timedelta(days=days_left))) == expected


@pytest.mark.django_db
def test_due__review_dates_are_dates_in_the_projects_time_zone() -> None:
    # Given a flag reviewed on 1 Dec, and an instant that is still 30 Nov in UTC but 1 Dec in Tokyo
    project = make_project()
    flag = make_string_flag(project, review_date=D(2026, 12, 2))
    now = datetime.datetime(2026, 11, 30, 20, 0, tzinfo=datetime.UTC)
    kinds = {d.kind for d in due_flag_reminders(now=now) if d.subject_id == flag.pk}
    assert kinds == {Kind.REVIEW_IN_7_DAYS}  # two days left in UTC
    Project.objects.filter(pk=project.pk).update(time_zone="Asia/Tokyo")
    kinds = {d.kind for d in due_flag_reminders(now=now) if d.subject_id == flag.pk}
    assert kinds == {Kind.REVIEW_IN_1_DAY}  # already 1 Dec in Tokyo: tomorrow


@pytest.mark.django_db
def test_due__stale_only_for_flags_on_and_not_evaluated_lately(settings: Any) -> None:
    settings.FEATUREOPS_STALE_AFTER_DAYS = 30
    project = make_project()
    on, off, fresh = (make_string_flag(project, key=k) for k in ("on_flag", "off_flag", "fresh_flag"))
    for flag in (on, fresh):
        targeting = flag.targetings.get(environment__key="development")
        services.targeting_update(targeting=targeting, actor=TEST_ACTOR, enabled=True)
    Flag.objects.update(created_at=timezone.now() - datetime.timedelta(days=60))
    EvaluationRecord.objects.create(flag=fresh, environment=fresh.targetings.first().environment,
                                    last_evaluated_at=timezone.now() - datetime.timedelta(days=2))
    stale = {d.subject_id for d in due_flag_reminders(now=timezone.now()) if d.kind == Kind.STALE}
    assert stale == {on.pk}
    assert off.pk not in stale


@pytest.mark.django_db
def test_sweep__twice__each_reminder_claimed_once_and_delivered_once(eager_celery: None,
                                                                     django_capture_on_commit_callbacks) -> None:
    # Given the demo: the profile flag's review is 3 days overdue, the tool mode's is in 5 days
    seed_demo()
    with django_capture_on_commit_callbacks(execute=True):
        first = reminders.sweep(enqueue=False)
        again = reminders.sweep(enqueue=False)
        delivered = reminders.deliver(first) + reminders.deliver(first)  # a retried batch
    # Then the second sweep claimed nothing, and each reminder was delivered once
    assert again == [] and len(first) == delivered
    kinds = set(Reminder.objects.values_list("kind", "subject_id"))
    profile = Flag.objects.get(key="support_assistant_profile")
    tool_mode = Flag.objects.get(key="support_agent_tool_mode")
    assert (Kind.REVIEW_OVERDUE, profile.pk) in kinds and (Kind.REVIEW_IN_7_DAYS, tool_mode.pk) in kinds
    inbox = Notification.objects.filter(recipient__username="owner", kind="reminder.review_overdue")
    assert inbox.count() == 1 and "support_assistant_profile" in inbox.get().title
    subjects = [m.subject for m in mail.outbox]
    assert subjects.count("[FeatureOps] " + inbox.get().title) == 1


@pytest.mark.django_db
def test_change_request_waiting__approvers_reminded_daily() -> None:
    from rollouts.models import ChangeRequest
    from tests.rollouts.support import escalate

    seed_demo()
    change_request = escalate()
    now = timezone.now()
    assert reminders.due_change_request_reminders(now=now) == []
    ChangeRequest.objects.filter(pk=change_request.pk).update(created_at=now - datetime.timedelta(hours=25))
    due = reminders.due_change_request_reminders(now=now)
    assert [(d.kind, d.period) for d in due] == [(Kind.CHANGE_REQUEST_WAITING, "day0")]
    ids = reminders.sweep(enqueue=False)
    reminders.deliver(ids)
    waiting = Notification.objects.filter(kind="reminder.change_request_waiting")
    assert sorted(waiting.values_list("recipient__username", flat=True)) == ["lead", "pm"]


@pytest.mark.django_db
def test_overdue_past_14_days__admins_reminded_too() -> None:
    seed_demo()
    Flag.objects.filter(key="support_assistant_profile").update(
        review_date=timezone.localdate() - datetime.timedelta(days=20))
    reminders.deliver(reminders.sweep(enqueue=False))
    admins = Notification.objects.filter(kind="reminder.review_overdue_admins")
    assert list(admins.values_list("recipient__username", flat=True)) == ["admin"]


@pytest.mark.django_db
def test_send_reminders_command__same_sweep_synchronously(capsys: Any) -> None:
    seed_demo()
    call_command("send_reminders")
    out = capsys.readouterr().out
    count = Reminder.objects.count()
    assert count > 0 and f"{count} reminder(s) due; {count} delivered." in out
    call_command("send_reminders")
    assert "0 reminder(s) due; 0 delivered." in capsys.readouterr().out


@pytest.mark.django_db
def test_no_owner__editors_reminded(make_user: Any) -> None:
    project = make_project()
    flag = make_string_flag(project, review_date=timezone.localdate() - datetime.timedelta(days=1), owner_team="")
    editor, viewer = make_user("ed"), make_user("vi")
    services.membership_grant(project=project, user=editor, role="editor", actor=TEST_ACTOR)
    services.membership_grant(project=project, user=viewer, role="viewer", actor=TEST_ACTOR)
    reminders.deliver(reminders.sweep(enqueue=False))
    assert Notification.objects.filter(recipient=editor, title__contains=flag.key).exists()
    assert not Notification.objects.filter(recipient=viewer).exists()


@pytest.mark.django_db
def test_reminders__go_to_project_webhooks_too() -> None:
    from webhooks.models import WebhookDelivery
    from webhooks.services import webhook_create

    project, _ = seed_demo()
    webhook_create(project_id=project.pk, url="https://hooks.example.com/featureops", events=["reminder."],
                   description="ops channel", actor=TEST_ACTOR)
    reminders.deliver(reminders.sweep(enqueue=False))
    events = set(WebhookDelivery.objects.values_list("event", flat=True))
    assert "reminder.review_overdue" in events
    delivery = WebhookDelivery.objects.filter(event="reminder.review_overdue").first()
    assert delivery.payload["data"]["flag"] == "support_assistant_profile"
