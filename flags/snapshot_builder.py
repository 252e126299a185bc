"""Turns the catalog rows of one environment into the plain snapshot the engine compiles.

On PostgreSQL one statement reads everything (one snapshot of the database). Elsewhere the
environment's version is read *before* its rows: a change committed in between is then
at worst included under the older version number, and the next poll (which sees the newer
number) rebuilds. The reverse order could label old rows with a new version and never catch up.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from flags.constants import LifecycleStage
from flags.models import Environment, Flag, SdkKey, Segment, Targeting, Variation
from flags.row_states import TARGETING_KEYS


def read_environment_versions() -> dict[int, int]:
    """The one query each evaluation process runs on every poll."""
    return dict(Environment.objects.values_list("id", "version"))


def build_environment_snapshot(environment_id: int) -> dict[str, Any]:
    """One consistent read. On PostgreSQL one statement (`_SNAPSHOT_SQL`): the database builds
    the JSON, so a change committing mid-build is wholly in or wholly out, and the build costs
    one round trip and little Python (it runs in every server process on every change, so its
    time is the propagation time). Elsewhere the ORM build below, in one transaction; a test
    holds the two equal (tests/flags/test_snapshot_builder.py)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_SNAPSHOT_SQL, {"environment": environment_id, "archived": LifecycleStage.ARCHIVED.value})
            row = cursor.fetchone()
        if row is None:
            raise Environment.DoesNotExist(f"environment {environment_id} does not exist")
        data = json.loads(row[0])
        data["built_at"] = time.time()
        return data
    with transaction.atomic():
        return _build(environment_id)


# The same data as `_build`, built by PostgreSQL in one statement. Flags in key order (the
# model's ordering), variations in their sort order: dicts keep the order they are built in.
_SNAPSHOT_SQL = """
SELECT json_build_object(
  'environment', json_build_object(
      'id', e.id, 'key', e.key, 'project', p.key, 'version', e.version,
      'changed_at', COALESCE(extract(epoch FROM e.changed_at)::float8, 0.0)),
  'flags', COALESCE((
      SELECT json_object_agg(f.key, json_build_object(
          'key', f.key, 'id', f.id, 'value_type', f.value_type, 'version', f.version, 'salt', f.salt,
          'fallback', fallback.key,
          'variations', COALESCE((
              SELECT json_object_agg(v.key, v.value ORDER BY v.sort_order, v.id)
              FROM flags_variation v WHERE v.flag_id = f.id), '{}'::json),
          'targeting', json_build_object(
              'enabled', t.enabled, 'targets', t.targets, 'rules', t.rules, 'default_serve', t.default_serve,
              'assignment_unit', t.assignment_unit, 'version', t.version)
      ) ORDER BY f.key)
      FROM flags_flag f
      JOIN flags_targeting t ON t.flag_id = f.id AND t.environment_id = e.id
      JOIN flags_variation fallback ON fallback.id = f.fallback_variation_id
      WHERE f.project_id = e.project_id
        AND NOT (f.stage = %(archived)s AND (f.served_until IS NULL OR f.served_until <= statement_timestamp()))
  ), '{}'::json),
  'segments', COALESCE((
      SELECT json_object_agg(s.key, json_build_object(
          'included_keys', s.included_keys, 'excluded_keys', s.excluded_keys, 'rules', s.rules) ORDER BY s.key)
      FROM flags_segment s WHERE s.project_id = e.project_id), '{}'::json),
  'sdk_keys', COALESCE((
      SELECT json_object_agg(k.key_hash, k.revoked_at IS NOT NULL ORDER BY k.id)
      FROM flags_sdkkey k WHERE k.environment_id = e.id), '{}'::json)
)::text
FROM flags_environment e JOIN flags_project p ON p.id = e.project_id
WHERE e.id = %(environment)s
"""


def _build(environment_id: int) -> dict[str, Any]:
    # Plain rows (values()), not model instances: the build is on the propagation path of
    # every change (commit -> every process serves it), and instances cost most of its time.
    environment = Environment.objects.values("id", "key", "project_id", "project__key", "version",
                                             "changed_at").get(pk=environment_id)
    project_id = environment["project_id"]
    targetings = {row["flag_id"]: {key: row[key] for key in TARGETING_KEYS}
                  for row in Targeting.objects.filter(environment_id=environment_id).values("flag_id", *TARGETING_KEYS)}
    # Archived flags are served through their grace period, then answer FLAG_NOT_FOUND.
    retired = Q(stage=LifecycleStage.ARCHIVED) & (Q(served_until__isnull=True) | Q(served_until__lte=timezone.now()))
    flags = (Flag.objects.filter(project_id=project_id).exclude(retired)
             .values("id", "key", "value_type", "version", "salt", "fallback_variation__key"))
    variations: dict[int, dict[str, Any]] = {}
    for flag_id, key, value in (Variation.objects.filter(flag__project_id=project_id)
                                .order_by("flag_id", "sort_order", "id").values_list("flag_id", "key", "value")):
        variations.setdefault(flag_id, {})[key] = value
    flag_data: dict[str, Any] = {}
    for flag in flags:
        targeting = targetings.get(flag["id"])
        if targeting is None or flag["fallback_variation__key"] is None:
            continue  # not yet complete (created in a transaction still being written)
        flag_data[flag["key"]] = {
            "key": flag["key"],
            "id": flag["id"],
            "value_type": flag["value_type"],
            "version": flag["version"],
            "salt": flag["salt"],
            "fallback": flag["fallback_variation__key"],
            "variations": variations.get(flag["id"], {}),
            "targeting": targeting,
        }
    segments = {
        row["key"]: {"included_keys": row["included_keys"], "excluded_keys": row["excluded_keys"], "rules": row["rules"]}
        for row in Segment.objects.filter(project_id=project_id).values("key", "included_keys", "excluded_keys", "rules")
    }
    sdk_keys = {
        key_hash: revoked_at is not None
        for key_hash, revoked_at in SdkKey.objects.filter(environment_id=environment_id).values_list(
            "key_hash", "revoked_at")
    }
    changed_at = environment["changed_at"]
    return {
        "environment": {"id": environment["id"], "key": environment["key"], "project": environment["project__key"],
                        "version": environment["version"], "changed_at": changed_at.timestamp() if changed_at else 0.0},
        "flags": flag_data,
        "segments": segments,
        "sdk_keys": sdk_keys,
        "built_at": time.time(),
    }
