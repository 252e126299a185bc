"""The reminder rows: one per (subject, kind, period), claimed by the sweep that inserted it."""

from __future__ import annotations

from django.db import models

from flags.models import Project


class Reminder(models.Model):
    """One reminder about one subject, of one kind, for one period. The unique constraint is
    what makes overlapping sweeps and retried tasks harmless: the run whose row lands owns
    the delivery (`run`), every other run's insert is a no-op."""

    class Kind(models.TextChoices):
        REVIEW_IN_7_DAYS = "review_in_7_days", "Review date in 7 days"
        REVIEW_IN_1_DAY = "review_in_1_day", "Review date tomorrow"
        REVIEW_OVERDUE = "review_overdue", "Review overdue"
        REVIEW_OVERDUE_ADMINS = "review_overdue_admins", "Review overdue by more than 14 days (admins)"
        CLEANUP_CANDIDATE = "cleanup_candidate", "Cleanup candidate"
        STALE = "stale", "Stale flag (not evaluated)"
        CHANGE_REQUEST_WAITING = "change_request_waiting", "Change request waiting for approval"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="reminders")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    subject_type = models.CharField(max_length=16)  # "flag" or "change_request"
    subject_id = models.PositiveIntegerField()
    period = models.CharField(max_length=32)
    run = models.CharField(max_length=32, help_text="The sweep that created the row, and so delivers it.")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "flags_reminder"  # created when reminders lived in flags; the app moved, the table stayed
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["subject_type", "subject_id", "kind", "period"],
                                    name="one_reminder_per_subject_kind_period"),
        ]
        indexes = [models.Index(fields=["run"], name="reminder_run")]

    def __str__(self) -> str:
        return f"{self.kind} {self.subject_type}:{self.subject_id} ({self.period})"
