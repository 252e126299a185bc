"""Thin Celery task over audit.checkpoints (autodiscovered; scheduled in settings.CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

import logging

from celery import shared_task

from audit.checkpoints import CheckpointKeyError, checkpoint_publish

logger = logging.getLogger(__name__)


@shared_task(name="audit.tasks.publish_checkpoint")
def publish_checkpoint() -> int | None:
    """Beat: sign the chain's head and publish it outside the database. Returns the head
    event's id. Running twice is harmless: each checkpoint is a true statement of its moment.
    Without AUDIT_CHECKPOINT_KEY it logs why and does nothing."""
    try:
        checkpoint = checkpoint_publish()
    except CheckpointKeyError as exc:
        logger.error("Audit checkpoint not published: %s", exc)
        return None
    return checkpoint.head_id if checkpoint else None
