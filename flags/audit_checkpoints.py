"""Audit checkpoints to the project webhooks and to the auditors' mailboxes.

Two of the publishers listed in `settings.AUDIT_CHECKPOINT_PUBLISHERS` (the file one is
`audit.checkpoints.append_to_file`). They live here, not in `audit`, for the reason
`flags.webhook_events` does: `audit` imports no other app, and only `flags` knows who holds
the auditor role; `flags` already depends on `webhooks`. The chain is global, so every
project's subscribed webhooks and every auditor receive the same checkpoint.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import transaction

from audit.checkpoints import WEBHOOK_EVENT, Checkpoint
from flags.constants import Role
from webhooks.models import Webhook
from webhooks.services import dispatch

logger = logging.getLogger(__name__)

SUBJECT_PREFIX = "[FeatureOps] "


def send_to_webhooks(checkpoint: Checkpoint) -> None:
    """One `audit.checkpoint` delivery per active webhook that subscribes to it, in every
    project; the envelope's `data` is the signed checkpoint, as in the file."""
    project_ids = (Webhook.objects.filter(active=True).order_by("project_id")
                   .values_list("project_id", flat=True).distinct())
    with transaction.atomic():
        for project_id in project_ids:
            dispatch(project_id=project_id, event=WEBHOOK_EVENT, payload=checkpoint.as_dict())


def email_auditors(checkpoint: Checkpoint) -> None:
    """One email per active person holding the auditor role in any project (once, however
    many projects they audit), and to nobody else. A failed send is logged; the others go."""
    auditors = (get_user_model().objects.filter(is_active=True, memberships__role=Role.AUDITOR)
                .exclude(email="").distinct().order_by("pk"))
    subject = f"{SUBJECT_PREFIX}Audit checkpoint: event #{checkpoint.head_id}, {checkpoint.count} rows"
    body = "\n".join([
        f"The audit trail's chain head at {checkpoint.created_at}, signed with the checkpoint key "
        f"{checkpoint.key_id}:",
        "",
        checkpoint.as_line(),
        "",
        "Keep this email where the application cannot reach it. To check that the trail was neither rewritten "
        "nor cut short since, save the line above (and those of earlier checkpoint emails) to a file and run, "
        "with AUDIT_CHECKPOINT_KEY set:",
        "",
        "    manage.py verify_audit --checkpoints FILE",
        "",
        f"Console: {settings.CONSOLE_BASE_URL}",
    ])
    with mail.get_connection() as connection:
        for auditor in auditors:
            try:
                mail.EmailMessage(subject=subject, body=body, to=[auditor.email], connection=connection).send()
            except Exception:
                logger.exception("Could not email audit checkpoint #%s to user %s.", checkpoint.head_id, auditor.pk)
