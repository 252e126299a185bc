"""Environment versions move, and every process that serves them hears it at once.

Every write that can change what an environment serves bumps `Environment.version` (and
`changed_at`) through `bump_environments`, in the writer's transaction. On PostgreSQL the
same statement queues `NOTIFY featureops_env, '<id>:<version>:<changed_at>,…'`, which the
database delivers when (and only if) the transaction commits. Listeners:

- each evaluation process's snapshot store (`snapshot_store.py`) rebuilds the environment;
- the event-stream server (`flags/ofrep_streams.py`) tells connected OFREP providers to re-fetch.

Notifications are a fast path, never the only one: listeners still poll the versions (a
missed notification, a reconnect), and on other databases polling is all there is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import connection
from django.db.models import F
from django.utils import timezone

CHANNEL = "featureops_env"

_BUMP_SQL = """
WITH bumped AS (
    UPDATE {table} SET version = version + 1, changed_at = statement_timestamp()
    WHERE {where} RETURNING id, version, changed_at
)
SELECT pg_notify(%s, string_agg(id || ':' || version || ':' || floor(extract(epoch FROM changed_at))::bigint, ','))
FROM bumped
"""


def bump_environments(*, ids: Iterable[int] | None = None, project_id: int | None = None) -> None:
    """Move the version of the given environments (or of every environment of a project)."""
    from flags.models import Environment

    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(Environment._meta.db_table)
        if ids is not None:
            where, params = "id = ANY(%s)", [list(ids)]
        else:
            where, params = "project_id = %s", [project_id]
        with connection.cursor() as cursor:
            cursor.execute(_BUMP_SQL.format(table=table, where=where), [*params, CHANNEL])
        return
    rows = Environment.objects.filter(pk__in=list(ids)) if ids is not None else Environment.objects.filter(
        project_id=project_id)
    rows.update(version=F("version") + 1, changed_at=timezone.now())


def parse(payload: str) -> list[tuple[int, int, int]]:
    """`'<id>:<version>:<changed_at>,…'` → [(id, version, changed_at)]; malformed parts are skipped."""
    changes = []
    for part in payload.split(","):
        try:
            env_id, version, changed_at = (int(field) for field in part.split(":"))
        except ValueError:
            continue
        changes.append((env_id, version, changed_at))
    return changes


def listener_params() -> dict[str, Any] | None:
    """Connection parameters for a LISTEN connection of its own (psycopg), or None when the
    database is not PostgreSQL (then listeners only poll)."""
    if connection.vendor != "postgresql":
        return None
    params = dict(connection.get_connection_params())
    for name in ("cursor_factory", "context", "prepare_threshold", "server_side_binding"):
        params.pop(name, None)
    return params
