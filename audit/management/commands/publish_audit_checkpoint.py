"""`python manage.py publish_audit_checkpoint`: the beat task's checkpoint, taken and published now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import CheckpointKeyError, checkpoint_publish


class Command(BaseCommand):
    help = ("Publish a signed checkpoint of the audit chain's head now, to every destination the beat task uses "
            "(for cron, or right before and after maintenance on the database).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            checkpoint = checkpoint_publish()
        except CheckpointKeyError as exc:
            raise CommandError(str(exc)) from None
        if checkpoint is None:
            self.stdout.write("The audit trail is empty: nothing to anchor yet.")
            return
        self.stdout.write(checkpoint.as_line())
