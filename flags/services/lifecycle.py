"""Lifecycle stages, recomputed by a periodic task."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import Actor, SystemActor, record
from flags.constants import LifecycleStage
from flags.models import (
    Flag,
    Project,
    Targeting,
)

# --- lifecycle -----------------------------------------------------------------------------


def compute_stage(flag: Flag, targetings: Sequence[Targeting], *, today: datetime.date, now: datetime.datetime) -> str:
    """The lifecycle stage a flag is in, from its contract and its targeting.

    draft: on in no environment. active: serving somewhere. released: a temporary flag that
    has served one variation to everyone in a governed environment for at least
    FEATUREOPS_RELEASED_AFTER_DAYS (its targeting unchanged that long). cleanup due: a
    temporary flag whose review date has passed. Permanent flags never become cleanup due.
    Archived is set explicitly and never recomputed away.
    """
    if flag.stage == LifecycleStage.ARCHIVED:
        return LifecycleStage.ARCHIVED
    if flag.is_temporary and flag.review_date and flag.review_date < today:
        return LifecycleStage.CLEANUP_DUE
    enabled = [t for t in targetings if t.enabled]
    if not enabled:
        return LifecycleStage.DRAFT
    if flag.is_temporary:
        released_before = now - datetime.timedelta(days=settings.FEATUREOPS_RELEASED_AFTER_DAYS)
        for targeting in enabled:
            if (
                targeting.environment.is_governed
                and not targeting.targets
                and not targeting.rules
                and "variation" in targeting.default_serve
                and targeting.updated_at <= released_before
            ):
                return LifecycleStage.RELEASED
    return LifecycleStage.ACTIVE


def flag_lifecycle_recompute(*, actor: Actor, project: Project | None = None) -> int:
    """Recompute every flag's stage; each change is its own audited transaction, so a
    failure on one flag does not hold back the rest. Returns how many flags moved."""
    now = timezone.now()
    today = timezone.localdate(now)
    flags = Flag.objects.exclude(stage=LifecycleStage.ARCHIVED).prefetch_related("targetings__environment")
    if project is not None:
        flags = flags.filter(project=project)
    moved = 0
    for flag in flags.select_related("project"):
        stage = compute_stage(flag, list(flag.targetings.all()), today=today, now=now)
        if stage != flag.stage:
            moved += _flag_stage_set(flag=flag, stage=stage, actor=actor)
    return moved


@transaction.atomic
def _flag_stage_set(*, flag: Flag, stage: str, actor: Actor) -> int:
    locked = Flag.objects.select_for_update().get(pk=flag.pk)
    if locked.stage == stage or locked.stage == LifecycleStage.ARCHIVED:
        return 0
    before = locked.stage
    Flag.objects.filter(pk=flag.pk).update(stage=stage)
    record(actor=actor, action=AuditAction.FLAG_STAGE_CHANGED, target=flag, project=flag.project, flag=flag,
           before={"stage": before}, after={"stage": stage},
           summary=f"{flag.key} moved from {LifecycleStage(before).label} to {LifecycleStage(stage).label}")
    return 1


LIFECYCLE_JOB = SystemActor("lifecycle-job")
