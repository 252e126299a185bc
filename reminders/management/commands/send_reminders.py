"""`python manage.py send_reminders`: the beat task's sweep, run synchronously (for cron)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from reminders.sweep import deliver, deliver_pending, sweep


class Command(BaseCommand):
    help = "Decide which reminders are due, and deliver them now (in-app, email, webhooks)."

    def handle(self, *args: Any, **options: Any) -> None:
        ids = sweep(enqueue=False)
        sent = deliver(ids) + deliver_pending()
        self.stdout.write(f"{len(ids)} reminder(s) due; {sent} delivered.")
