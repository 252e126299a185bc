"""Event-stream benchmark: 10,000 OFREP event streams (flags/ofrep_streams.py) open on one uvicorn
process, and the time from a committed change to its event on *every* stream.
Goal: 10,000 streams on one process; change -> event on every stream p99 < 100 ms.

One uvicorn process (uvloop, httptools, no access log) serves the bench database of
bench/ofrep_http.py. A client process (asyncio protocols on raw sockets: the lightest client
Python has) opens the streams to production, all with the URL a bulk answer gave; then this
process commits BENCH_CHANGES version bumps (`change_feed.bump_environments`, in a transaction)
BENCH_GAP seconds apart, and each stream's arrival time of each event is compared with the
moment its commit returned (CLOCK_MONOTONIC, shared by the processes of one machine).
Client and server share the machine's cores, so the client's own time to read 10,000 sockets
is inside the figures.

    python bench/ofrep_streams.py     # BENCH_STREAMS=10000 BENCH_CHANGES=20 BENCH_GAP=3
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import time
from typing import Any

STREAMS = int(os.environ.get("BENCH_STREAMS", "10000"))
CHANGES = int(os.environ.get("BENCH_CHANGES", "20"))
GAP_SECONDS = float(os.environ.get("BENCH_GAP", "3"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "1"))
# The ASGI application served (to compare a variant of the stream server in the same run conditions).
APP = os.environ.get("BENCH_APP", "featureops_site.asgi:application")
SECRET = "bench-stream-secret-key-xxxxxxxxxxxxxxxxxx"  # noqa: S105 - the bench server's own, nothing real


def raise_open_files_limit() -> int:
    """Each stream is a socket on both sides: lift the soft limit to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the client process ------------------------------------------------------------------------------

_EVENT_ID = re.compile(rb"id: (\d+-\d+)\n")


class _Stream(asyncio.Protocol):
    """One stream: notes when each event id arrives. Nothing else is parsed (the chunk framing
    of the HTTP response is skipped over by the search)."""

    def __init__(self, request: bytes, arrivals: dict[bytes, list[float]], opened: asyncio.Future[bool]) -> None:
        self.request, self.arrivals, self.opened = request, arrivals, opened
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.open:
            self.open = data.startswith(b"HTTP/1.1 200")
            if not self.opened.done():
                self.opened.set_result(self.open)
        for event_id in _EVENT_ID.findall(data):
            self.arrivals.setdefault(event_id, []).append(now)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.opened.done():
            self.opened.set_result(False)


async def _client(host: str, port: int, uri: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    request = f"GET {uri} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
    arrivals: dict[bytes, list[float]] = {}
    streams: list[_Stream] = []
    gate = asyncio.Semaphore(256)  # connections being set up at once (the server's listen backlog)

    async def connect() -> bool:
        async with gate:
            opened: asyncio.Future[bool] = loop.create_future()
            try:
                _, stream = await loop.create_connection(lambda: _Stream(request, arrivals, opened), host, port)
            except OSError:
                return False
            streams.append(stream)  # type: ignore[arg-type]
            return await asyncio.wait_for(opened, timeout=30)

    started = time.monotonic()
    results = await asyncio.gather(*(connect() for _ in range(count)), return_exceptions=True)
    print(json.dumps({"open": sum(result is True for result in results), "failed": count - sum(
        result is True for result in results), "seconds": time.monotonic() - started}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "dump"
    print(json.dumps({"open": sum(stream.open for stream in streams),
                      "arrivals": {event_id.decode(): times for event_id, times in arrivals.items()}}), flush=True)


def client_main(host: str, port: str, uri: str, count: str) -> None:
    raise_open_files_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_client(host, int(port), uri, int(count)))


# -- the benchmark -------------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, Any]:
    with open(f"/proc/{pid}/status") as handle:
        rss_kib = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_mib": rss_kib / 1024, "cpu_seconds": (int(fields[11]) + int(fields[12])) / ticks,
            "open_fds": len(os.listdir(f"/proc/{pid}/fd"))}


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def start_uvicorn(database_url: str) -> tuple[subprocess.Popen[bytes], str, int]:
    from tests.servers import ROOT, free_port

    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "DEBUG": "0", "SECRET_KEY": SECRET,
           "ALLOWED_HOSTS": "127.0.0.1,localhost", "LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1",
               "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
               "--log-level", "warning", "--backlog", "4096"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)  # noqa: S603
    return process, "127.0.0.1", port


def wait_until_serving(host: str, port: int) -> None:
    import http.client

    deadline = time.monotonic() + 30
    while True:
        connection = http.client.HTTPConnection(host, port, timeout=2)
        try:
            connection.request("GET", "/ofrep/v1/streams")
            connection.getresponse().read()  # 401: no token; the server answers
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            connection.close()


def bulk_stream_uri(key: str) -> str:
    """The stream URL of a bulk answer, evaluated in this process: the stream server's process
    then holds streams only, as in production (gunicorn answers OFREP, uvicorn the streams)."""
    from tests.ofrep_client import evaluate

    response = evaluate(None, key)
    if response.status != 200:
        raise RuntimeError(f"bulk evaluation answered {response.status}: {response.body[:200]!r}")
    return response.json()["eventStreams"][0]["endpoint"]["requestUri"]


def main() -> None:
    # The bench process makes the stream URL the way a bulk answer does, so it signs with the server's key.
    os.environ["SECRET_KEY"] = SECRET
    from ofrep_http import DATABASE_URL, prepare_database

    limit = raise_open_files_limit()
    if limit < STREAMS + 1000:
        sys.exit(f"the open-files limit is {limit}: {STREAMS} streams need more (ulimit -n)")
    key = prepare_database()
    from django.db import connection, transaction

    from flags.change_feed import bump_environments
    from flags.models import Environment
    from tests.servers import stop

    production = Environment.objects.get(project__key="support-assistant", key="production")
    process, host, port = start_uvicorn(DATABASE_URL)
    clients: list[subprocess.Popen[str]] = []
    try:
        wait_until_serving(host, port)
        uri = bulk_stream_uri(key)
        idle = _proc_status(process.pid)
        shares = [STREAMS // CLIENTS + (1 if n < STREAMS % CLIENTS else 0) for n in range(CLIENTS)]
        clients = [subprocess.Popen([sys.executable, __file__, "client", host, str(port), uri, str(share)],  # noqa: S603
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for share in shares]
        opened = [json.loads(client.stdout.readline()) for client in clients]  # type: ignore[union-attr]
        streams_open = sum(report["open"] for report in opened)
        connect_seconds = max(report["seconds"] for report in opened)
        time.sleep(1)
        loaded = _proc_status(process.pid)
        print(f"{streams_open} of {STREAMS} streams open in {connect_seconds:.1f} s "
              f"({sum(report['failed'] for report in opened)} failed); server RSS {idle['rss_mib']:.0f} MiB idle, "
              f"{loaded['rss_mib']:.0f} MiB with the streams ({(loaded['rss_mib'] - idle['rss_mib']) * 1024 / max(1, streams_open):.1f} KiB each), "
              f"{loaded['open_fds']} open fds", flush=True)

        commits: dict[str, float] = {}
        cpu_before = _proc_status(process.pid)["cpu_seconds"]
        for _ in range(CHANGES):
            time.sleep(GAP_SECONDS)
            with transaction.atomic():
                bump_environments(ids=[production.pk])
            committed = time.monotonic()
            version = Environment.objects.values_list("version", flat=True).get(pk=production.pk)
            commits[f"{production.pk}-{version}"] = committed
        time.sleep(5)  # the last change reaches every stream
        cpu_spent = _proc_status(process.pid)["cpu_seconds"] - cpu_before
        after = _proc_status(process.pid)
        arrivals: dict[str, list[float]] = {}
        still_open = 0
        for client in clients:
            client.stdin.write("dump\n")  # type: ignore[union-attr]
            client.stdin.flush()  # type: ignore[union-attr]
            report = json.loads(client.stdout.readline())  # type: ignore[union-attr]
            still_open += report["open"]
            for event_id, times in report["arrivals"].items():
                arrivals.setdefault(event_id, []).extend(times)
    finally:
        for client in clients:
            client.kill()
            client.wait()
        stop(process)
        connection.close()

    lags: list[float] = []
    first: list[float] = []
    last: list[float] = []
    missing = 0
    for event_id, committed in commits.items():
        times = sorted((moment - committed) * 1000 for moment in arrivals.get(event_id, []))
        missing += streams_open - len(times)
        if times:
            lags += times
            first.append(times[0])
            last.append(times[-1])
    lags.sort()
    first.sort()
    last.sort()
    print(f"{len(commits)} changes, {GAP_SECONDS:g} s apart; {len(lags)} (stream, change) arrivals, {missing} missing; "
          f"{still_open} streams still open at the end")
    if lags:
        print(f"change -> event on a stream: p50 {_percentile(lags, 0.5):.0f} ms, p99 {_percentile(lags, 0.99):.0f} ms, "
              f"max {lags[-1]:.0f} ms (goal: p99 < 100 ms over all streams)")
        print(f"per change: first stream after median {_percentile(first, 0.5):.0f} ms, "
              f"last stream after median {_percentile(last, 0.5):.0f} ms (max {last[-1]:.0f} ms)")
    print(f"server: RSS {after['rss_mib']:.0f} MiB at the end; CPU {cpu_spent * 1000 / max(1, len(commits)):.0f} ms per "
          f"change (including heartbeats), {cpu_spent * 1e6 / max(1, len(commits) * streams_open):.0f} µs per stream-event")
    print(f"machine: {os.cpu_count()} cores; one uvicorn process (uvloop, httptools) serving {APP}; {CLIENTS} client process(es) "
          "on the same machine; PostgreSQL on loopback")


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        client_main(*sys.argv[2:6])
    else:
        main()
