"""The Celery broker transports settings select by the broker URL's scheme
(CELERY_BROKER_TRANSPORT; kombu's Connection lets an explicit transport win over the scheme).
Both are kombu's own transports with the broker faults below made survivable (issue 15,
item 2: "Workers die on broker faults").

FilesystemTransport, for filesystem:// (the embedded broker of `make run`)
    kombu's filesystem transport creates each message file under its final name and then
    writes it, while a consumer lists the folder, moves the file away and reads it without
    any lock: a consumer can read a message half written, and the JSONDecodeError kills the
    worker (the known kombu problem, celery/kombu#1551). Here a message is written under a
    name no consumer looks at, fsynced, then renamed into place (one atomic step); a consumer
    claims a file by an atomic rename in the same folder, so no two consumers read one file
    and a file is whole before anyone can see it. A file that still cannot be decoded (left
    by an older writer, or damaged on disk) is moved to the corrupt folder and logged as an
    error; the next message is delivered. An exchange's routing table is created the same way
    (kombu empties it before locking it, so a publisher could read it empty and fail, and two
    workers starting at once could lose one's binding).

RedisTransport, for redis://
    kombu's Redis transport, with two guards against what a Redis restart did to a worker
    with acks_late (found by tests/site/test_broker_faults.py, kombu 5.7.0, celery 5.7.0):

    1. The worker exited: "Unrecoverable error: AttributeError: 'NoneType' object has no
       attribute 'hostname'" whenever the connection dropped while the worker ran a task and
       waited on BRPOP for the next. Celery's consumer collects the broken connection
       (Connection.collect() closes the channel, whose close stops early on the BRPOP read's
       ConnectionError, then detaches the transport: transport.client = None), then closes it
       again; that second close restores the unacknowledged messages through a new Redis pool
       built from transport.client, now None. AttributeError is no connection error, so
       nothing catches it (the same family as celery/kombu#582). RedisChannel turns "this
       channel's transport is detached" into the redis ConnectionError it is, which Celery
       handles as a lost connection: the worker reconnects. The messages that channel held
       unacknowledged stay in Redis's `unacked` hash and come back after the visibility
       timeout (at least once, never lost); an ack on the dead channel is logged ("Couldn't
       ack"), not fatal.
    2. A message was lost when Redis died as it handed it over: BRPOP takes the message off
       the queue, then kombu records it in the `unacked` hash with a second command; if that
       fails, kombu raises and the message, held nowhere else, is dropped (or, had the record
       been written but its reply lost, waits an hour for the visibility timeout). RedisQoS
       delivers it anyway, and keeps it: a Celery worker drops what it holds unstarted when
       it reconnects, so the next channel to the same Redis puts it back on its queue (at
       least once: a message that did start runs again).

    tests/site/test_broker_faults.py pins both bugs on kombu's own transport (so the guards can go
    when kombu fixes them) and shows a worker surviving ten Redis restarts under load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.message import Message
from kombu.transport import filesystem, virtual
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property
from redis.exceptions import ConnectionError as RedisConnectionError

logger = logging.getLogger(__name__)

# Suffixes of the names a message file has before it is complete and after it is claimed.
# kombu's queue filter (`_get`, `_size`, `_purge`) takes a file for queue q only when the
# part of its name after the first dot is exactly "q.msg", so neither is ever counted,
# purged or delivered.
PARTIAL_SUFFIX = ".partial"
CLAIMED_SUFFIX = ".claimed"


def _write_new(path: str | os.PathLike[str], data: bytes) -> None:
    """Create `path` (it must not exist) holding `data`, on disk when this returns."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view):]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class FilesystemChannel(filesystem.Channel):
    """kombu's filesystem channel with atomic publishing and claiming."""

    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:
        # kombu's name: its time prefix keeps the folder's sort order first-in, first-out.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + PARTIAL_SUFFIX
        try:
            _write_new(partial, str_to_bytes(dumps(payload)))  # on disk before its name says it is there
            # The message appears whole or not at all. (The folder itself is not fsynced: a
            # power cut may lose the newest messages of this development broker, never show
            # a partial one.)
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: str) -> dict[str, Any]:
        wanted = f"{queue}.msg"
        folder = self.data_folder_in
        for filename in sorted(os.listdir(folder)):
            if filename.partition(".")[2] != wanted:
                continue
            # Claim by renaming within the folder (so within one filesystem: atomic). Of
            # consumers racing for one file exactly one rename succeeds; the others find it gone.
            # (A consumer killed between its claim and its read leaves the claimed file, never
            # delivered, for a person to look at; this transport loses the messages a killed
            # worker holds anyway, as it keeps unacknowledged messages in memory.)
            claimed = os.path.join(folder, f"{filename}{CLAIMED_SUFFIX}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(os.path.join(folder, filename), claimed)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ChannelError(f"Cannot claim file {filename!r} from queue.") from exc
            try:
                with open(claimed, "rb") as message_file:
                    raw = message_file.read()
            except OSError as exc:
                raise ChannelError(f"Cannot read file {claimed!r} from queue.") from exc
            try:
                payload = loads(bytes_to_str(raw))
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                self._set_aside(claimed, filename, queue, exc)
                continue
            if not isinstance(payload, dict):
                self._set_aside(claimed, filename, queue, ValueError("not a kombu message (no JSON object)"))
                continue
            self._finish(claimed, filename)
            return payload
        raise Empty()

    def _finish(self, claimed: str, filename: str) -> None:
        """A delivered message's file: kept in the processed folder, or deleted."""
        try:
            if self.store_processed:
                shutil.move(claimed, os.path.join(self.processed_folder, filename))
            else:
                os.unlink(claimed)
        except OSError as exc:
            raise ChannelError(f"Cannot remove file {claimed!r} from queue.") from exc

    def _set_aside(self, claimed: str, filename: str, queue: str, error: Exception) -> None:
        """An undecodable message file goes to the corrupt folder, with an error in the log;
        never an exception, which would stop the worker consuming every other message."""
        destination = self.corrupt_folder / filename
        try:
            self.corrupt_folder.mkdir(parents=True, exist_ok=True)
            shutil.move(claimed, destination)
        except OSError:
            # Left where it is: its claimed name keeps it out of the queue all the same.
            logger.exception("Undecodable message %s in queue %s (%s); could not move it to %s, left as %s",
                             filename, queue, error, self.corrupt_folder, claimed)
            return
        logger.error("Undecodable message %s in queue %s (%s): set aside as %s", filename, queue, error, destination)

    @cached_property
    def corrupt_folder(self) -> Path:
        option = self.transport_options.get("corrupt_folder")
        return Path(option) if option else Path(self.data_folder_in).parent / "corrupt"

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        # kombu creates an exchange's table by opening it for writing (which empties it)
        # before taking its lock: a publisher reading the table in between gets a
        # JSONDecodeError, and two workers binding at once can lose one's binding. A new
        # table is written aside and linked into place, which fails if another binder got
        # there first; updating an existing table is kombu's, under its exclusive lock.
        table = self._exchange_file(exchange)
        if not table.exists():
            self.control_folder.mkdir(parents=True, exist_ok=True)
            entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
            partial = table.with_name(f"{table.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
            try:
                _write_new(partial, str_to_bytes(dumps([entry])))
                os.link(partial, table)
                return
            except FileExistsError:
                pass  # another binder created the table meanwhile: add ours to it below
            except OSError as exc:
                raise ChannelError(f"Cannot create {table}") from exc
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(partial)
        super()._queue_bind(exchange, routing_key, pattern, queue)


class FilesystemTransport(filesystem.Transport):
    Channel = FilesystemChannel


# Messages Redis handed over as its connection died, before it confirmed recording them as
# unacknowledged: put back on their queue by the next channel this process opens.
_unrecorded: list[tuple[Any, Any, str, str]] = []  # (which Redis, payload, exchange, routing key)
_unrecorded_lock = threading.Lock()


def _which_redis(channel: Any) -> Any:
    """Host, port and database of a channel's Redis, read from its client's pool."""
    with contextlib.suppress(Exception):
        kwargs = channel.client.connection_pool.connection_kwargs
        return (kwargs.get("host"), kwargs.get("port"), kwargs.get("path"), kwargs.get("db"))
    return None


class RedisQoS(kombu_redis.QoS):
    """kombu's Redis ack emulation; see the module's docstring for the second guard."""

    def append(self, message: Message, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)
        except self.channel.connection_errors as exc:
            # Redis already handed this message over (BRPOP took it off the queue): it is
            # delivered, held in memory as unacknowledged. Whether Redis recorded it in its
            # `unacked` hash is unknown (the reply was lost, not necessarily the write); if it
            # did, the message comes back after the visibility timeout, a second delivery.
            # The connection is dying, and a Celery worker drops what it holds but has not
            # started when it reconnects (it counts on the broker to deliver it again), so the
            # message is also kept to be put back on its queue once Redis answers again: at
            # least once, never lost (a message that did start runs twice).
            logger.warning("Delivering message %s although Redis could not confirm recording it as "
                           "unacknowledged (%s: %s); it goes back on its queue when Redis answers again",
                           delivery_tag, type(exc).__name__, exc)
            delivery = message.delivery_info
            with _unrecorded_lock:
                _unrecorded.append((self.channel.redis_address, message._raw, delivery["exchange"],
                                    delivery["routing_key"]))
            virtual.QoS.append(self, message, delivery_tag)


class RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel; see the module's docstring for the two guards."""

    QoS = RedisQoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # connects: Redis answers again
        # Read now, while the transport is attached: a dying channel cannot tell its address.
        self.redis_address = _which_redis(self)
        self._restore_unrecorded()

    def _restore_unrecorded(self) -> None:
        here = self.redis_address
        with _unrecorded_lock:
            pending = [item for item in _unrecorded if item[0] == here]
            _unrecorded[:] = [item for item in _unrecorded if item[0] != here]
        if not pending:
            return
        try:
            with self.conn_or_acquire() as client, client.pipeline() as pipe:
                for _, payload, exchange, routing_key in pending:
                    self._do_restore_message(payload, exchange, routing_key, pipe)
                pipe.execute()
        except self.connection_errors as exc:
            with _unrecorded_lock:  # Redis went away again: the next channel tries
                _unrecorded.extend(pending)
            logger.warning("Could not put %d message(s) back on their queues yet (%s); the next connection "
                           "tries again", len(pending), exc)
            return
        logger.warning("Put %d message(s) back on their queues that Redis handed over as it went away",
                       len(pending))

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection of this channel is closed")
        return super()._connparams(asynchronous=asynchronous)


class RedisTransport(kombu_redis.Transport):
    Channel = RedisChannel
