# Reminder now lives in the reminders app (reminders.0001 takes it over in Django's state);
# its table, flags_reminder, and every row in it stay. State only: no SQL runs.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("flags", "0004_text_limits_and_audit_readers"),
        ("reminders", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="Reminder")],
            database_operations=[],
        ),
    ]
