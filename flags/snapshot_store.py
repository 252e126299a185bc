"""The in-process store of compiled snapshots that evaluation reads.

Each server process holds one `SnapshotStore`. Requests only read it (no database query).
A daemon thread keeps it current: on PostgreSQL it LISTENs on `change_feed.CHANNEL` with a
connection of its own and refreshes as soon as a change commits (push), and it still reads
`Environment.version` every OFREP_SNAPSHOT_SAFETY_POLL_SECONDS (1 s) in case a notification
was missed, and at once after reconnecting. Elsewhere (SQLite) it polls every
OFREP_SNAPSHOT_POLL_SECONDS (0.2 s). An environment whose version moved is rebuilt and
compiled off the request path, then swapped in with one reference assignment. Every catalog
write bumps the versions it affects in its own transaction (SDK key creation and revocation
included), so each process serves a committed change within one notification (or one poll)
plus one rebuild.

The store starts lazily, in each process, on the first request; a fork (gunicorn workers)
is noticed by pid, so every worker has its own poller. If the database is unreachable the
poller logs, keeps the last good snapshots and tries again on the next tick.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection
from django.db.models import Q

from flags import change_feed
from flags.evaluation.engine import Snapshot, SnapshotError, compile_snapshot
from flags.models import EvaluationRecord, Flag, SdkKey
from flags.snapshot_builder import build_environment_snapshot, read_environment_versions

logger = logging.getLogger(__name__)
KEY_USE_FLUSH_SECONDS = 30


@dataclass(frozen=True, slots=True)
class KeyLookup:
    status: str  # "ok", "unknown", "revoked" or "unavailable"
    snapshot: Snapshot | None = None


class SnapshotStore:
    def __init__(
        self,
        *,
        poll_seconds: float,
        build: Callable[[int], dict[str, Any]] = build_environment_snapshot,
        read_versions: Callable[[], dict[int, int]] = read_environment_versions,
        listen: bool = True,
        safety_poll_seconds: float | None = None,
    ) -> None:
        self.poll_seconds = poll_seconds
        self.listen = listen
        self.safety_poll_seconds = safety_poll_seconds if safety_poll_seconds is not None else poll_seconds
        self.notifications = 0  # wake-ups by a notification (or a reconnect), not by the safety poll
        self._build = build
        self._read_versions = read_versions
        # (snapshots by environment id, key hash -> (environment id, revoked)), replaced whole.
        self._state: tuple[dict[int, Snapshot], dict[str, tuple[int, bool]]] = ({}, {})
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._key_use: dict[str, float] = {}
        # (environment id, flag key) -> when; environment id -> when all its flags were evaluated (bulk)
        self._flag_use: dict[tuple[int, str], float] = {}
        self._bulk_use: dict[int, float] = {}
        self.last_success: float = 0.0
        self.last_error: str = ""
        # environment id -> when a poll last found its snapshot at the database's version (time.time())
        self._confirmed_at: dict[int, float] = {}

    # -- reading (the request path) --

    def lookup(self, key_hash: str) -> KeyLookup:
        if self._pid != os.getpid():
            self._start()
        snapshots, keys = self._state
        entry = keys.get(key_hash)
        if entry is None:
            return KeyLookup("unavailable" if not snapshots and self.last_error else "unknown")
        environment_id, revoked = entry
        if revoked:
            return KeyLookup("revoked")
        self._key_use[key_hash] = time.time()  # flushed to SdkKey.last_used_at in batches, off the request path
        return KeyLookup("ok", snapshots.get(environment_id))

    def record_evaluation(self, environment_id: int, flag_key: str) -> None:
        """A flag was evaluated: remembered in memory, written in batches (stale-flag tracking)."""
        self._flag_use[(environment_id, flag_key)] = time.time()

    def record_bulk_evaluation(self, environment_id: int) -> None:
        self._bulk_use[environment_id] = time.time()

    def snapshot(self, environment_id: int) -> Snapshot | None:
        if self._pid != os.getpid():
            self._start()
        return self._state[0].get(environment_id)

    def freshness(self) -> list[tuple[Snapshot, float]]:
        """Each loaded snapshot, and when a poll last found it current (time.time()): for /readyz
        and /metrics. A snapshot that stopped compiling stays, with the time it was last current."""
        if self._pid != os.getpid():
            self._start()
        confirmed = self._confirmed_at
        return [(snapshot, confirmed.get(env_id, snapshot.built_at)) for env_id, snapshot in self._state[0].items()]

    # -- refreshing (the poller, or a caller that just wrote) --

    def refresh(self, notified: dict[int, int] | None = None) -> set[int]:
        """Rebuild every environment whose version moved; returns the ids rebuilt. `notified`
        (environment id -> version, from a change notification) spares the versions query:
        only those environments are compared and rebuilt."""
        with self._refresh_lock:
            current, current_keys = self._state
            if notified:
                versions = {env_id: snapshot.version for env_id, snapshot in current.items()}
                versions.update({env_id: version for env_id, version in notified.items()
                                 if version > versions.get(env_id, 0)})
            else:
                versions = self._read_versions()
            changed = {env_id for env_id, version in versions.items()
                       if env_id not in current or current[env_id].version != version}
            gone = set(current) - set(versions)
            if not changed and not gone:
                self.last_success = time.time()
                self.last_error = ""  # the database is back, with nothing changed meanwhile
                self._confirm(current, versions)
                return set()
            snapshots = {env_id: snap for env_id, snap in current.items() if env_id not in gone}
            key_sets = {env_id: dict(snap.sdk_keys) for env_id, snap in snapshots.items()}
            for env_id in changed:
                data = self._build(env_id)
                # Keys (and revocations) apply even when the flags fail to compile.
                key_sets[env_id] = dict(data.get("sdk_keys", {}))
                try:
                    snapshots[env_id] = compile_snapshot(data)
                except SnapshotError:
                    logger.exception("environment %s: snapshot does not compile; keeping the last good one", env_id)
            keys = {key_hash: (env_id, revoked) for env_id, hashes in key_sets.items()
                    for key_hash, revoked in hashes.items()}
            # One assignment: a reader sees the old pair or the new one, never half of each.
            self._state = (snapshots, keys)
            self.last_success = time.time()
            self.last_error = ""
            self._confirm(snapshots, versions)
            return changed

    def _confirm(self, snapshots: dict[int, Snapshot], versions: dict[int, int]) -> None:
        previous, now = self._confirmed_at, self.last_success
        self._confirmed_at = {
            env_id: now if snapshot.version == versions.get(env_id) else previous.get(env_id, snapshot.built_at)
            for env_id, snapshot in snapshots.items()}

    def _start(self) -> None:
        with self._start_lock:
            pid = os.getpid()
            if self._pid == pid:
                return
            if self._pid is not None:  # a forked child: the parent's snapshots and poller are not ours
                self._state = ({}, {})
                self._confirmed_at = {}
            self._stop = threading.Event()
            self.poll_once()
            # Only now: requests arriving meanwhile wait on the lock instead of reading an
            # empty store and refusing valid keys.
            self._pid = pid
            if self.poll_seconds > 0:
                threading.Thread(target=self._poll, name="snapshot-poller", daemon=True).start()
                threading.Thread(target=self._flush_use, name="snapshot-use-flusher", daemon=True).start()

    def poll_once(self, notified: dict[int, int] | None = None) -> None:
        try:
            self.refresh(notified)
        except Exception as exc:  # noqa: BLE001 - keep serving the last good snapshots
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.warning("snapshot refresh failed, serving the last good snapshots: %s", self.last_error)
            connection.close()  # reconnect on the next tick

    def flush_key_use(self) -> int:
        """Write when each SDK key was last used: one UPDATE per key used since the last flush."""
        used, self._key_use = self._key_use, {}
        for key_hash, seen in used.items():
            when = datetime.datetime.fromtimestamp(seen, tz=datetime.UTC)
            SdkKey.objects.filter(key_hash=key_hash).filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=when)).update(last_used_at=when)
        return len(used)

    def flush_evaluations(self) -> int:
        """Write when each flag was last evaluated per environment: one query per environment
        to find the flags, one upsert for all rows. Returns how many rows were written."""
        used, self._flag_use = self._flag_use, {}
        bulk, self._bulk_use = self._bulk_use, {}
        snapshots = self._state[0]
        by_environment: dict[int, dict[str, float]] = {}
        for environment_id, when in bulk.items():
            snapshot = snapshots.get(environment_id)
            if snapshot is not None:
                by_environment.setdefault(environment_id, {}).update(dict.fromkeys(snapshot.flags, when))
        for (environment_id, key), when in used.items():
            seen = by_environment.setdefault(environment_id, {})
            seen[key] = max(when, seen.get(key, 0.0))
        rows = []
        for environment_id, keys in by_environment.items():
            ids = dict(Flag.objects.filter(project__environments=environment_id, key__in=list(keys))
                       .values_list("key", "pk"))
            rows += [EvaluationRecord(flag_id=ids[key], environment_id=environment_id,
                                      last_evaluated_at=datetime.datetime.fromtimestamp(when, tz=datetime.UTC))
                     for key, when in keys.items() if key in ids]
        if rows:
            EvaluationRecord.objects.bulk_create(rows, update_conflicts=True, unique_fields=["flag", "environment"],
                                                 update_fields=["last_evaluated_at"])
        return len(rows)

    def _poll(self) -> None:
        # The thread keeps one database connection open across ticks (reconnecting only
        # after an error), rather than paying a new connection five times a second, and on
        # PostgreSQL a second one that only LISTENs.
        params = change_feed.listener_params() if self.listen else None
        listener = _Listener(params) if params is not None else None
        try:
            while not self._stop.is_set():
                notified = None
                if listener is not None:
                    woken, notified = listener.wait(self.safety_poll_seconds)
                    self.notifications += woken
                elif self._stop.wait(self.poll_seconds):
                    break
                if self._stop.is_set():
                    break
                self._tick(notified)
        finally:
            if listener is not None:
                listener.close()

    def _tick(self, notified: dict[int, int] | None = None) -> None:
        self.poll_once(notified)

    def _flush_use(self) -> None:
        # A thread of its own: a slow write here must never delay the next rebuild.
        while not self._stop.wait(KEY_USE_FLUSH_SECONDS):
            try:
                self.flush_key_use()
                self.flush_evaluations()
            except Exception:  # noqa: BLE001 - last-use times are best effort
                logger.warning("could not record SDK key use or flag evaluations", exc_info=True)
                connection.close()

    def stop(self) -> None:
        self._stop.set()


class _Listener:
    """The poller's LISTEN connection. `wait` blocks until a change is notified or the
    timeout passes; it answers True when the store should refresh now because of it."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.connection: psycopg.Connection[Any] | None = None

    def wait(self, timeout: float) -> tuple[bool, dict[int, int] | None]:
        """(woken by a notification or a reconnect, the versions it named); the versions are
        None when the store must read them all (a timeout, a reconnect, an unreadable payload)."""
        try:
            if self.connection is None or self.connection.closed:
                self.connection = psycopg.connect(**self.params, autocommit=True)
                self.connection.execute(f"LISTEN {change_feed.CHANNEL}")
                return True, None  # (re)connected: anything committed meanwhile was not notified to us
            for notification in self.connection.notifies(timeout=timeout, stop_after=1):
                changes = change_feed.parse(notification.payload)
                return True, {env_id: version for env_id, version, _changed_at in changes} or None
            return False, None
        except psycopg.Error as exc:
            logger.warning("change notifications unavailable, polling meanwhile: %s", exc)
            self.close()
            time.sleep(timeout)
            return False, None

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            except psycopg.Error:
                pass
            self.connection = None


_store: SnapshotStore | None = None
_store_lock = threading.Lock()


def get_store() -> SnapshotStore:
    global _store
    if _store is None:
        with _store_lock:
            if _store is None:
                _store = SnapshotStore(poll_seconds=settings.OFREP_SNAPSHOT_POLL_SECONDS,
                                       safety_poll_seconds=settings.OFREP_SNAPSHOT_SAFETY_POLL_SECONDS)
    return _store


def reset_store(store: SnapshotStore | None = None) -> SnapshotStore | None:
    """Replace the process's store (tests start each case from a fresh one)."""
    global _store
    if _store is not None:
        _store.stop()
    _store = store
    return store
