from __future__ import annotations

from celery import shared_task

from flags.services import LIFECYCLE_JOB, flag_lifecycle_recompute


@shared_task(name="flags.tasks.recompute_lifecycle_stages")
def recompute_lifecycle_stages() -> int:
    """Beat: move flags between draft, active, released and cleanup due."""
    return flag_lifecycle_recompute(actor=LIFECYCLE_JOB)
