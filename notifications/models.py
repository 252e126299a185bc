"""What the console tells a person: an inbox row, and at most one email per row.

A leaf app: it imports no app of ours. Callers (change requests, kill switches…) decide who
hears what; they pass users, a kind, words and a console path.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models

TITLE_MAX_LENGTH = 200

kind_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9_.-]*\Z", "A notification kind is a lowercase code such as change_request.waiting."
)


def validate_console_path(value: str) -> None:
    """Only a path inside the console: never another site, never a script URL."""
    if not value.startswith("/") or value.startswith(("//", "/\\")) or any(c.isspace() or ord(c) < 32 for c in value):
        raise ValidationError("A notification link is a path inside the console, such as /p/key/changes/3/.")


class Notification(models.Model):
    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=40, validators=[kind_validator])
    title = models.CharField(max_length=TITLE_MAX_LENGTH)
    body = models.TextField(blank=True)
    url = models.CharField(max_length=500, blank=True, validators=[validate_console_path])
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)
    # Set when the email step is done for this row: sent, or nothing to send (see
    # services.send_emails). NULL rows are what the sweep retries.
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["recipient", "read_at"], name="notification_recipient_read"),
            # The sweep's question, "unsent and recent", stays cheap however long the table grows.
            models.Index(fields=["created_at"], condition=models.Q(emailed_at__isnull=True),
                         name="notification_unsent"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}: {self.title}"

    @property
    def is_unread(self) -> bool:
        return self.read_at is None
