# The Reminder model moves from flags to this app. Its table (flags_reminder, created by
# flags.0003) stays where it is: these operations change Django's state only, no SQL runs.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("flags", "0004_text_limits_and_audit_readers"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Reminder",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("kind", models.CharField(choices=[("review_in_7_days", "Review date in 7 days"), ("review_in_1_day", "Review date tomorrow"), ("review_overdue", "Review overdue"), ("review_overdue_admins", "Review overdue by more than 14 days (admins)"), ("cleanup_candidate", "Cleanup candidate"), ("stale", "Stale flag (not evaluated)"), ("change_request_waiting", "Change request waiting for approval")], max_length=32)),
                        ("subject_type", models.CharField(max_length=16)),
                        ("subject_id", models.PositiveIntegerField()),
                        ("period", models.CharField(max_length=32)),
                        ("run", models.CharField(help_text="The sweep that created the row, and so delivers it.", max_length=32)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("delivered_at", models.DateTimeField(blank=True, null=True)),
                        ("project", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="reminders", to="flags.project")),
                    ],
                    options={
                        "db_table": "flags_reminder",
                        "ordering": ["-id"],
                        "indexes": [models.Index(fields=["run"], name="reminder_run")],
                        "constraints": [models.UniqueConstraint(fields=("subject_type", "subject_id", "kind", "period"), name="one_reminder_per_subject_kind_period")],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
