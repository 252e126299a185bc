"""Lifecycle stages, recomputed by a periodic task."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.constants import AuditAction
from audit.services import Actor, SystemActor, record
from audit.validators import check_text_limit
from flags.constants import LifecycleStage
from flags.models import (
    Flag,
    Project,
    Targeting,
)
from flags.services._common import _bump_project

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
        cleanup_before = released_before - datetime.timedelta(days=settings.FEATUREOPS_CLEANUP_AFTER_RELEASED_DAYS)
        released = [t for t in enabled if t.environment.is_governed and not t.targets and not t.rules
                    and "variation" in t.default_serve and t.updated_at <= released_before]
        if any(t.updated_at <= cleanup_before for t in released):
            return LifecycleStage.CLEANUP_DUE  # released long enough: remove the branch
        if released:
            return LifecycleStage.RELEASED
    return LifecycleStage.ACTIVE


def turn_on_problems(flag: Flag) -> list[str]:
    """What a temporary flag lacks before it may be turned on in a governed environment."""
    if not flag.is_temporary:
        return []
    missing = []
    if not (flag.owner_user_id or flag.owner_team):
        missing.append("an owner")
    if not flag.review_date:
        missing.append("a review date")
    if not flag.cleanup_rule.strip():
        missing.append("a cleanup rule")
    return missing


def flag_lifecycle_recompute(*, actor: Actor, project: Project | None = None) -> int:
    """Recompute every flag's stage; each change is its own audited transaction, so a
    failure on one flag does not hold back the rest. Returns how many flags moved."""
    now = timezone.now()
    flags = Flag.objects.exclude(stage=LifecycleStage.ARCHIVED).prefetch_related("targetings__environment")
    if project is not None:
        flags = flags.filter(project=project)
    moved = 0
    for flag in flags.select_related("project"):
        # review dates are dates in the project's time zone
        stage = compute_stage(flag, list(flag.targetings.all()), today=flag.project.today(now), now=now)
        if stage != flag.stage:
            moved += _flag_stage_set(flag=flag, stage=stage, actor=actor)
    retire_archived_flags(actor=actor, now=now)
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


# --- archiving -----------------------------------------------------------------------------


def archive_problem(flag: Flag, targetings: Sequence[Targeting]) -> str:
    """Why a flag may not be archived yet ("" when it may): it must be off everywhere, or
    due for cleanup."""
    if flag.stage == LifecycleStage.ARCHIVED:
        return "It is archived already."
    if flag.stage == LifecycleStage.CLEANUP_DUE:
        return ""
    on = [t.environment.name for t in targetings if t.enabled]
    if on:
        return (f"It is still on in {', '.join(on)}: turn it off everywhere first, or wait until it is due for "
                "cleanup.")
    return ""


@transaction.atomic
def flag_archive(*, flag: Flag, actor: Actor, reason: str) -> Flag:
    """Archive a flag that is off everywhere or due for cleanup. It keeps being served for
    FEATUREOPS_ARCHIVE_GRACE_HOURS, so applications that still ask get their fallback-safe
    answer while they are cleaned up; then it answers FLAG_NOT_FOUND."""
    flag = Flag.objects.select_for_update(of=("self",)).select_related("project").get(pk=flag.pk)
    problem = archive_problem(flag, list(flag.targetings.select_related("environment")))
    if problem:
        raise ValidationError(problem)
    if not reason or not reason.strip():
        raise ValidationError({"reason": "Say why: the reason stays with the flag in the audit trail."})
    check_text_limit("reason", reason.strip())
    now = timezone.now()
    before = {"stage": flag.stage}
    flag.stage = LifecycleStage.ARCHIVED
    flag.archived_at = now
    flag.served_until = now + datetime.timedelta(hours=settings.FEATUREOPS_ARCHIVE_GRACE_HOURS)
    flag.retired_at = None
    flag.save(update_fields=["stage", "archived_at", "served_until", "retired_at", "updated_at"])
    _bump_project(flag.project)
    record(actor=actor, action=AuditAction.FLAG_ARCHIVED, target=flag, project=flag.project, flag=flag,
           before=before, after={"stage": flag.stage, "served_until": flag.served_until.isoformat()},
           reason=reason.strip(), summary=f"Archived {flag.key}: served until {flag.served_until:%Y-%m-%d %H:%M} UTC")
    return flag


@transaction.atomic
def flag_restore(*, flag: Flag, actor: Actor, reason: str) -> Flag:
    """Bring an archived flag back; its stage is computed afresh, and it is served again."""
    flag = Flag.objects.select_for_update(of=("self",)).select_related("project").get(pk=flag.pk)
    if flag.stage != LifecycleStage.ARCHIVED:
        raise ValidationError("Only an archived flag can be restored.")
    if not reason or not reason.strip():
        raise ValidationError({"reason": "Say why: the reason stays with the flag in the audit trail."})
    check_text_limit("reason", reason.strip())
    now = timezone.now()
    if flag.retired_at is not None:
        # Retired means applications stopped getting it: coming back on in a governed
        # environment is a turn-on, which goes through a change request, not a restore.
        from flags.services.targeting import targeting_update

        for targeting in flag.targetings.select_related("environment").filter(environment__is_governed=True,
                                                                              enabled=True):
            targeting_update(targeting=targeting, actor=actor, enabled=False,
                             reason=f"Restored from the archive: off in {targeting.environment.name} until turned "
                                    "on through a change request")
    flag.stage = LifecycleStage.DRAFT  # a placeholder, so compute_stage does not keep it archived
    stage = compute_stage(flag, list(flag.targetings.select_related("environment")), today=flag.project.today(now),
                          now=now)
    flag.stage = stage
    flag.archived_at = flag.served_until = flag.retired_at = None
    flag.save(update_fields=["stage", "archived_at", "served_until", "retired_at", "updated_at"])
    _bump_project(flag.project)
    record(actor=actor, action=AuditAction.FLAG_RESTORED, target=flag, project=flag.project, flag=flag,
           before={"stage": LifecycleStage.ARCHIVED}, after={"stage": stage}, reason=reason.strip(),
           summary=f"Restored {flag.key} from the archive")
    return flag


def retire_archived_flags(*, actor: Actor, now: datetime.datetime | None = None) -> int:
    """Archived flags whose grace period ended: rebuild their project's snapshots without
    them (one bump per project) and record it once per flag."""
    now = now or timezone.now()
    due = list(Flag.objects.filter(stage=LifecycleStage.ARCHIVED, served_until__lte=now, retired_at__isnull=True)
               .select_related("project"))
    if not due:
        return 0
    with transaction.atomic():
        for project in {flag.project_id: flag.project for flag in due}.values():
            _bump_project(project)
        for flag in due:
            if Flag.objects.filter(pk=flag.pk, retired_at__isnull=True).update(retired_at=now):
                record(actor=actor, action=AuditAction.FLAG_RETIRED, target=flag, project=flag.project, flag=flag,
                       summary=f"{flag.key} is no longer served: evaluations answer FLAG_NOT_FOUND")
    return len(due)
