"""Which reminders about flags are due: review dates (in 7 days, tomorrow, overdue and every
7 days while overdue, and to the admins past FEATUREOPS_OVERDUE_ADMIN_DAYS), cleanup
candidates and stale flags. Decided from a few whole-table reads, never a query per flag;
`period` names the window a reminder belongs to, so the (subject, kind, period) unique
constraint sends each one once."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Max, Q

from flags.constants import TEMPORARY_LIFETIMES, LifecycleStage
from flags.models import EvaluationRecord, Flag, Project, Targeting
from reminders.models import Reminder

Kind = Reminder.Kind


@dataclass(frozen=True, slots=True)
class Due:
    project_id: int
    kind: str
    subject_type: str
    subject_id: int
    period: str


def _week(day: datetime.date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def review_reminders(*, review_date: datetime.date, today: datetime.date) -> Iterator[tuple[str, str]]:
    """(kind, period) for one review date seen on `today` (a date in the project's zone)."""
    days_left = (review_date - today).days
    if 1 < days_left <= 7:
        yield Kind.REVIEW_IN_7_DAYS, review_date.isoformat()
    elif 0 <= days_left <= 1:
        yield Kind.REVIEW_IN_1_DAY, review_date.isoformat()
    elif days_left < 0:
        overdue = -days_left
        yield Kind.REVIEW_OVERDUE, f"{review_date.isoformat()}/w{(overdue - 1) // 7}"
        past = overdue - settings.FEATUREOPS_OVERDUE_ADMIN_DAYS
        if past > 0:
            yield Kind.REVIEW_OVERDUE_ADMINS, f"{review_date.isoformat()}/w{(past - 1) // 7}"


def due_flag_reminders(*, now: datetime.datetime) -> list[Due]:
    """Every flag reminder due at `now`. Four queries, whatever the number of flags."""
    zones = {p.pk: p for p in Project.objects.only("pk", "time_zone")}
    today = {pk: project.today(now) for pk, project in zones.items()}
    flags = list(Flag.objects.exclude(stage=LifecycleStage.ARCHIVED)
                 .values_list("pk", "project_id", "review_date", "stage", "lifetime", "created_at"))
    on = set(Targeting.objects.filter(enabled=True).values_list("flag_id", flat=True).distinct())
    last = dict(EvaluationRecord.objects.values("flag_id").annotate(last=Max("last_evaluated_at"))
                .values_list("flag_id", "last"))
    stale_before = now - datetime.timedelta(days=settings.FEATUREOPS_STALE_AFTER_DAYS)
    due = []
    for pk, project_id, review_date, stage, lifetime, created_at in flags:
        day = today[project_id]
        week = _week(day)
        overdue = False
        if review_date is not None:
            for kind, period in review_reminders(review_date=review_date, today=day):
                due.append(Due(project_id, kind, "flag", pk, period))
                overdue = overdue or kind == Kind.REVIEW_OVERDUE
        if stage == LifecycleStage.CLEANUP_DUE and lifetime in TEMPORARY_LIFETIMES and not overdue:
            due.append(Due(project_id, Kind.CLEANUP_CANDIDATE, "flag", pk, week))
        if pk in on and (last.get(pk) or created_at) <= stale_before:
            due.append(Due(project_id, Kind.STALE, "flag", pk, week))
    return due


def stale_filter(*, now: datetime.datetime) -> Q:
    """Flags on somewhere and not evaluated for FEATUREOPS_STALE_AFTER_DAYS (for listings)."""
    before = now - datetime.timedelta(days=settings.FEATUREOPS_STALE_AFTER_DAYS)
    recent = EvaluationRecord.objects.filter(last_evaluated_at__gt=before).values("flag_id")
    return Q(targetings__enabled=True, created_at__lte=before) & ~Q(pk__in=recent)
