"""Turns the catalog rows of one environment into the plain snapshot the engine compiles.

The environment's version is read *before* its rows: a change committed in between is then
at worst included under the older version number, and the next poll (which sees the newer
number) rebuilds. The reverse order could label old rows with a new version and never catch up.
"""

from __future__ import annotations

import time
from typing import Any

from django.db import connection, transaction
from django.db.models import Prefetch, Q
from django.utils import timezone

from flags.constants import LifecycleStage
from flags.models import Environment, Flag, SdkKey, Segment, Targeting, Variation
from flags.row_states import targeting_state


def read_environment_versions() -> dict[int, int]:
    """The one query each evaluation process runs on every poll."""
    return dict(Environment.objects.values_list("id", "version"))


def build_environment_snapshot(environment_id: int) -> dict[str, Any]:
    """One consistent read: on PostgreSQL a REPEATABLE READ transaction, so a change
    committing mid-build is either wholly in the snapshot or wholly out of it."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return _build(environment_id)  # (already inside a caller's transaction: its snapshot holds)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return _build(environment_id)


def _build(environment_id: int) -> dict[str, Any]:
    environment = Environment.objects.select_related("project").get(pk=environment_id)
    targetings = {t.flag_id: t for t in Targeting.objects.filter(environment_id=environment_id)}
    # Archived flags are served through their grace period, then answer FLAG_NOT_FOUND.
    retired = Q(stage=LifecycleStage.ARCHIVED) & (Q(served_until__isnull=True) | Q(served_until__lte=timezone.now()))
    flags = (
        Flag.objects.filter(project_id=environment.project_id)
        .exclude(retired)
        .select_related("fallback_variation")
        .prefetch_related(Prefetch("variations", queryset=Variation.objects.order_by("sort_order", "id")))
    )
    flag_data: dict[str, Any] = {}
    for flag in flags:
        targeting = targetings.get(flag.pk)
        if targeting is None or flag.fallback_variation_id is None:
            continue  # not yet complete (created in a transaction still being written)
        flag_data[flag.key] = {
            "key": flag.key,
            "id": flag.pk,
            "value_type": flag.value_type,
            "version": flag.version,
            "salt": flag.salt,
            "fallback": flag.fallback_variation.key,
            "variations": {v.key: v.value for v in flag.variations.all()},
            "targeting": targeting_state(targeting),
        }
    segments = {
        s.key: {"included_keys": s.included_keys, "excluded_keys": s.excluded_keys, "rules": s.rules}
        for s in Segment.objects.filter(project_id=environment.project_id)
    }
    sdk_keys = {
        key_hash: revoked_at is not None
        for key_hash, revoked_at in SdkKey.objects.filter(environment_id=environment_id).values_list(
            "key_hash", "revoked_at")
    }
    return {
        "environment": {"id": environment.pk, "key": environment.key, "project": environment.project.key,
                        "version": environment.version},
        "flags": flag_data,
        "segments": segments,
        "sdk_keys": sdk_keys,
        "built_at": time.time(),
    }
