"""The embedded broker (filesystem://, `make run`) through featureops_site.broker's
FilesystemTransport: no consumer ever reads a half-written message (kombu's own transport lets
one, and the JSONDecodeError stopped a worker), consumers declaring queues at once keep every
binding (kombu's can lose one or leave the exchange's table unreadable), a file that cannot be
decoded is set aside and the next message still arrives, and real workers run tasks end to end.
Run against kombu's own transport (TRANSPORT = "kombu.transport.filesystem:Transport"), the
first two tests fail."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from kombu import Connection, Exchange, Queue

from featureops_site.broker import FilesystemTransport
from tests.broker_probe_tasks import recorded
from tests.workers import stop_worker, unique_prefix, worker_env

TRANSPORT = "featureops_site.broker:FilesystemTransport"
WRITERS, READERS, MESSAGES_PER_WRITER = 4, 3, 150
PAD_BYTES = 128 * 1024  # big messages: a write takes long enough for a reader to look mid-way


def _folders(root: Path) -> dict[str, Any]:
    """The transport options settings give a filesystem:// broker, rooted at `root`."""
    options: dict[str, Any] = {"store_processed": False, "polling_interval": 0.01}
    for option, folder in (("data_folder_in", "queue"), ("data_folder_out", "queue"),
                           ("processed_folder", "processed"), ("control_folder", "control"),
                           ("corrupt_folder", "corrupt")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        options[option] = str(root / folder)
    return options


def _pad(writer: int, seq: int) -> str:
    digest = hashlib.sha256(f"{writer}:{seq}".encode()).hexdigest()
    return (digest * (PAD_BYTES // len(digest) + 1))[:PAD_BYTES]


def _write(transport: str, options: dict[str, Any], queue: str, writer: int, go: Any) -> None:
    """A writer process: its messages, as fast as it can."""
    go.wait()
    with Connection("filesystem://", transport=transport, transport_options=options) as connection:
        simple = connection.SimpleQueue(queue)
        for seq in range(MESSAGES_PER_WRITER):
            simple.put({"writer": writer, "seq": seq, "pad": _pad(writer, seq)})
        simple.close()


def _read(transport: str, options: dict[str, Any], queue: str, received: str, go: Any, writers_done: Any) -> None:
    """A reader process: takes messages until the writers are done and the queue stays empty,
    then writes down (writer, seq, body intact) for each. Any exception ends it non-zero."""
    go.wait()
    got: list[tuple[int, int, bool]] = []
    quiet_since: float | None = None
    with Connection("filesystem://", transport=transport, transport_options=options) as connection:
        simple = connection.SimpleQueue(queue)
        while True:
            try:
                message = simple.get(timeout=0.1)
            except simple.Empty:
                if writers_done.is_set():
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > 1.5:
                        break
                continue
            quiet_since = None
            body = message.payload
            got.append((body["writer"], body["seq"], body["pad"] == _pad(body["writer"], body["seq"])))
            message.ack()
        simple.close()
    Path(received).write_text(json.dumps(got))


def test_filesystem_broker__concurrent_writers_and_readers__every_message_whole_and_received_once(
        tmp_path: Path) -> None:
    # Given four writer processes and three reader processes on one queue folder
    options = _folders(tmp_path)
    context = multiprocessing.get_context("spawn")
    go, writers_done = context.Event(), context.Event()
    writers = [context.Process(target=_write, args=(TRANSPORT, options, "work", writer, go))
               for writer in range(WRITERS)]
    readers = [context.Process(target=_read, args=(TRANSPORT, options, "work", str(tmp_path / f"read-{reader}.json"),
                                                   go, writers_done))
               for reader in range(READERS)]
    for process in writers + readers:
        process.start()
    # When they all start at once, the readers taking messages while the writers write them
    go.set()
    for process in writers:
        process.join(timeout=180)
    writers_done.set()
    for process in readers:
        process.join(timeout=180)
    # Then every process ended well (a reader that met a partial message would have raised)
    exit_codes = {"writers": [process.exitcode for process in writers],
                  "readers": [process.exitcode for process in readers]}
    assert exit_codes == {"writers": [0] * WRITERS, "readers": [0] * READERS}, exit_codes
    # and every message arrived exactly once, whole
    received = [tuple(entry) for reader in range(READERS)
                for entry in json.loads((tmp_path / f"read-{reader}.json").read_text())]
    assert all(intact for _, _, intact in received)
    ids = sorted((writer, seq) for writer, seq, _ in received)
    assert ids == [(writer, seq) for writer in range(WRITERS) for seq in range(MESSAGES_PER_WRITER)]
    # and nothing was set aside or left behind (no partial, no claimed file)
    assert not list((tmp_path / "corrupt").iterdir())
    assert not list((tmp_path / "queue").iterdir())


def test_filesystem_broker__undecodable_file__set_aside_and_the_next_message_arrives(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Given a message file an older writer left half written, first in its queue, and a good
    # message after it
    options = _folders(tmp_path)
    half = tmp_path / "queue" / f"1_{uuid.uuid4()}.work.msg"
    half.write_bytes(b'{"body": "eyJ0YXNrIjogInJvbGxvdXRz')
    with Connection("filesystem://", transport=FilesystemTransport, transport_options=options) as connection:
        simple = connection.SimpleQueue("work")
        simple.put({"n": 1})
        # When a consumer reads the queue
        with caplog.at_level(logging.ERROR, logger="featureops_site.broker"):
            message = simple.get(timeout=5)
        message.ack()
        # Then the good message arrives
        assert message.payload == {"n": 1}
        with pytest.raises(simple.Empty):
            simple.get(timeout=0.2)
        simple.close()
    # and the bad file is in the corrupt folder, as it was, with an error in the log
    assert (tmp_path / "corrupt" / half.name).read_bytes() == b'{"body": "eyJ0YXNrIjogInJvbGxvdXRz'
    assert not list((tmp_path / "queue").iterdir())
    assert [record.levelno for record in caplog.records if half.name in record.getMessage()] == [logging.ERROR]


def test_filesystem_broker__consumers_binding_one_new_exchange_at_once__every_binding_kept(tmp_path: Path) -> None:
    # Given eight consumers (threads: the table's lock, flock, is held per open file, so
    # threads contend for it as processes do) declaring queues on one new exchange at once,
    # thirty times over
    failures: list[str] = []
    for attempt in range(30):
        options = _folders(tmp_path / f"attempt-{attempt}")
        exchange = Exchange(f"shared-{attempt}-{uuid.uuid4().hex[:8]}", type="direct")
        names = [f"{exchange.name}-q{number}" for number in range(8)]
        go, errors = threading.Event(), []

        def declare(name: str, options: dict[str, Any] = options, go: threading.Event = go,
                    errors: list[BaseException] = errors, exchange: Exchange = exchange) -> None:
            go.wait()
            try:
                with Connection("filesystem://", transport=TRANSPORT, transport_options=options) as connection:
                    Queue(name, exchange, routing_key=name)(connection.default_channel).declare()
            except BaseException as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

        threads = [threading.Thread(target=declare, args=(name,)) for name in names]
        for thread in threads:
            thread.start()
        # When they all go
        go.set()
        for thread in threads:
            thread.join(timeout=30)
        # Then none failed, and the exchange's table (readable) routes to every one of their queues
        with Connection("filesystem://", transport=TRANSPORT, transport_options=options) as connection:
            try:
                bound = sorted(entry.queue for entry in connection.default_channel.get_table(exchange.name))
            except ValueError as exc:  # a JSONDecodeError: the table itself is damaged
                bound = [f"unreadable table: {exc}"]
        if errors or bound != sorted(names):
            failures.append(f"attempt {attempt}: bound {bound}, errors {errors!r}")
    assert not failures, failures


@pytest.mark.postgres
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_filesystem_broker__real_workers__run_every_task_once_past_a_corrupt_file(tmp_path: Path) -> None:
    # Given two workers on a filesystem:// broker (as `make run` starts them), and a half-written
    # message file of an older writer waiting in their queue
    prefix = unique_prefix("fsbroker")
    queue = f"{prefix}probe"
    broker_dir, probe_log = tmp_path / "broker", tmp_path / "probe.log"
    env = worker_env(tmp_path, prefix, CELERY_BROKER_URL="filesystem://", CELERY_FILESYSTEM_DIR=str(broker_dir),
                     BROKER_PROBE_LOG=str(probe_log))
    (broker_dir / "queue").mkdir(parents=True)
    half = broker_dir / "queue" / f"1_{uuid.uuid4()}.{queue}.msg"
    half.write_bytes(b'{"body": "W1siYWJj')
    workers, outputs = [], []
    for number in range(2):
        output = tmp_path / f"worker-{number}.log"
        with output.open("wb") as sink:
            workers.append(subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                [sys.executable, "-m", "celery", "-A", "featureops_site", "worker", "-I", "tests.broker_probe_tasks",
                 "-Q", queue, "-c", "1", "-P", "prefork", "-n", f"fs-{number}-{uuid.uuid4().hex[:6]}@%h",
                 "--without-gossip", "--without-mingle", "-l", "WARNING"],
                env=env, cwd=settings.BASE_DIR, stdout=sink, stderr=subprocess.STDOUT))
        outputs.append(output)
    try:
        # When 30 tasks are published through the broker settings configure for filesystem://
        published = subprocess.run(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "tests.broker_probe_tasks", queue, "30"], env=env, cwd=settings.BASE_DIR,
            capture_output=True, text=True, timeout=60, check=True).stdout.split()
        transport, tokens = published[0], published[1:]
        deadline = time.monotonic() + 60
        while set(tokens) - set(recorded(probe_log)) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = [worker.poll() is None for worker in workers]
    finally:
        for worker in workers:
            stop_worker(worker)
    log = "\n".join(output.read_text(errors="replace") for output in outputs)
    # Then they went through our transport, and every task ran exactly once
    assert transport == TRANSPORT
    assert len(tokens) == 30
    assert sorted(recorded(probe_log)) == sorted(tokens), log[-5000:]
    # and the workers are alive, the bad file set aside with an error logged, nothing unrecoverable
    assert alive == [True, True], log[-5000:]
    assert "Unrecoverable error" not in log, log[-5000:]
    assert (broker_dir / "corrupt" / half.name).exists(), log[-5000:]
    assert "Undecodable message" in log and half.name in log, log[-5000:]
