from __future__ import annotations

from django.apps import AppConfig


class RemindersConfig(AppConfig):
    """Review, cleanup, stale-flag and waiting-approval reminders: what is due (due.py), the
    sweep that claims each once and delivers it (sweep.py), the beat tasks and the command.
    A leaf: it reads flags and change requests and tells people through notifications and
    webhooks; nothing of ours imports it."""

    name = "reminders"
    verbose_name = "Reminders"
