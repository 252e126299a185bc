from __future__ import annotations

import datetime

from celery import shared_task

from flags.services import LIFECYCLE_JOB, flag_lifecycle_recompute
from flags.services.access_tokens import token_used


@shared_task(name="flags.tasks.recompute_lifecycle_stages")
def recompute_lifecycle_stages() -> int:
    """Beat: move flags between draft, active, released and cleanup due."""
    return flag_lifecycle_recompute(actor=LIFECYCLE_JOB)


@shared_task(name="flags.tasks.record_token_use", ignore_result=True)
def record_token_use(token_id: int, at: str) -> None:
    """An API token's last use, written off the request path (api.auth sends at most one a minute)."""
    token_used(token_id=token_id, at=datetime.datetime.fromisoformat(at))
