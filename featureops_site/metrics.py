"""`/metrics`: Prometheus text format (prometheus-client), for Prometheus to scrape.

Two kinds of figures:
- kept by the request paths, in memory (featureops_site/instruments.py): OFREP requests by
  endpoint and status, their latency, events ingested. Under gunicorn with several workers
  these live in PROMETHEUS_MULTIPROC_DIR (featureops_site/gunicorn.conf.py) and are summed
  over every worker, dead ones included, so counters never go backwards;
- read at scrape time: queue depths (from the broker), workers' last heartbeats and task
  failures (database rows the workers write), aggregation lag (one query), and the OFREP
  snapshots' age in the process that answers the scrape.

The database and the broker may be down during a scrape: `featureops_database_up` /
`featureops_broker_up` then say 0 and the figures that need them are left out; the scrape
itself still answers 200.

Who may read it (settings): with METRICS_TOKEN set, requests carrying `Authorization: Bearer
<token>` (others get 401); otherwise clients whose address is in METRICS_ALLOWED_NETWORKS
(loopback by default; the address found as for sign-ins, behind TRUSTED_PROXY_COUNT proxies),
others 403.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from featureops_site import instruments, selectors
from featureops_site.auth import client_address
from featureops_site.queues import QUEUES, queue_of
from flags.models import Environment
from flags.snapshot_store import get_store

logger = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
METRICS_PATH = "/metrics"

# environment id -> "project/environment", refreshed at every scrape that reaches the database,
# so the snapshot series keep their labels through a database outage.
_environment_labels: dict[int, str] = {}


def multiprocess_mode() -> bool:
    """prometheus_client's own rule: values go to files when this variable names a directory."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


# --- access ------------------------------------------------------------------------------------


def _refusal(environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]]] | None:
    """None when the request may read the metrics, else the status (and headers) to answer."""
    token = settings.METRICS_TOKEN
    if token:
        authorization = environ.get("HTTP_AUTHORIZATION", "")
        given = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        if hmac.compare_digest(given.encode(), token.encode()):
            return None
        return 401, [("WWW-Authenticate", 'Bearer realm="metrics"')]
    # The sign-in rule for who the client is (TRUSTED_PROXY_COUNT): a request relayed by a proxy
    # on this host is judged by the address the proxy saw, not taken for a local one.
    address = client_address(SimpleNamespace(META=environ))  # type: ignore[arg-type]
    try:
        client = ipaddress.ip_address(address or "")
    except ValueError:
        return 403, []
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped:
        client = client.ipv4_mapped
    if any(client in ipaddress.ip_network(network) for network in settings.METRICS_ALLOWED_NETWORKS):
        return None
    return 403, []


# --- figures read at scrape time ---------------------------------------------------------------


class _Instruments:
    """The in-process figures of this process alone (no multiprocess directory: runserver, tests)."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        return instruments.REGISTRY.collect()


class ScrapeCollector:
    """Everything /metrics reads when it is scraped (see the module docstring)."""

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration; collect() runs queries only when scraped

    def collect(self) -> Iterator[Metric]:
        yield from self._database_figures()
        yield from self._broker_figures()
        yield from self._snapshot_figures()

    def _database_figures(self) -> Iterator[Metric]:
        database_up = GaugeMetricFamily("featureops_database_up", "1 if this scrape could query the database.")
        try:
            workers = selectors.worker_statuses()
            failures = selectors.task_failure_counts()
            lag = selectors.aggregation_lag_seconds()
            _environment_labels.update(
                {env_id: f"{project}/{key}"
                 for env_id, project, key in Environment.objects.values_list("id", "project__key", "key")})
        except DatabaseError as exc:
            logger.warning("metrics: database unavailable: %s: %s", type(exc).__name__, exc)
            try:
                connection.close()  # a fresh connection at the next scrape
            except DatabaseError:
                pass
            database_up.add_metric([], 0)
            yield database_up
            return
        database_up.add_metric([], 1)
        yield database_up

        last_seen = GaugeMetricFamily(
            "featureops_worker_last_seen_seconds", "Seconds since the worker's last heartbeat, per queue it consumes "
            "(workers silent for a week are forgotten).", labels=["worker", "queue"])
        for worker in workers:
            for queue in worker.queues:
                last_seen.add_metric([worker.hostname, queue], worker.seconds_since_seen)
        yield last_seen
        live = GaugeMetricFamily("featureops_queue_live_workers", "Workers consuming the queue whose last "
                                 "heartbeat is at most WORKER_STALE_SECONDS old (alert on 0).", labels=["queue"])
        for queue in selectors.queue_statuses(workers):
            live.add_metric([queue.name], len(queue.live_workers))
        yield live
        failed = CounterMetricFamily("featureops_task_failures", "Celery task failures, from every worker, "
                                     "by task and queue.", labels=["task", "queue"])
        for row in failures:
            failed.add_metric([row.task, queue_of(row.task) or ""], row.failures)
        yield failed
        yield GaugeMetricFamily("featureops_telemetry_aggregation_lag_seconds", "Seconds since the oldest telemetry "
                                "event not yet aggregated was received (0 when caught up).", value=lag)

    def _broker_figures(self) -> Iterator[Metric]:
        depths = selectors.queue_depths()
        yield GaugeMetricFamily("featureops_broker_up", "1 if this scrape could reach the Celery broker.",
                                value=0 if depths is None else 1)
        if depths is None:
            return
        depth = GaugeMetricFamily("featureops_queue_depth", "Tasks waiting in the queue.", labels=["queue"])
        for queue in QUEUES:
            depth.add_metric([queue], depths.get(queue, 0))
        yield depth

    def _snapshot_figures(self) -> Iterator[Metric]:
        store = get_store()
        freshness = store.freshness()  # loads the snapshots if this process has not yet
        now = time.time()
        yield GaugeMetricFamily("featureops_ofrep_snapshots_loaded", "Environments whose compiled snapshot the "
                                "answering process holds.", value=len(freshness))
        age = GaugeMetricFamily(
            "featureops_ofrep_snapshot_age_seconds", "Seconds since the answering process last found the "
            "environment's snapshot at the database's version (grows when polling fails or a snapshot stops "
            "compiling).", labels=["environment"])
        for snapshot, confirmed_at in freshness:
            label = _environment_labels.get(snapshot.environment_id, f"{snapshot.environment_id}/{snapshot.environment_key}")
            age.add_metric([label], max(0.0, now - confirmed_at))
        yield age


# --- the endpoint ------------------------------------------------------------------------------


def scrape(accept: str = "") -> tuple[bytes, str]:
    """The exposition, encoded as the scraper asked (Prometheus text, or OpenMetrics)."""
    registry = CollectorRegistry()
    if multiprocess_mode():
        MultiProcessCollector(registry)
    else:
        registry.register(_Instruments())
    registry.register(ScrapeCollector())
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def metrics_application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
        body = b"Use GET.\n"
        start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD"),
                                                  ("Content-Length", str(len(body)))])
        return [body]
    refusal = _refusal(environ)
    if refusal is not None:
        status, headers = refusal
        body = b"Not allowed.\n"
        start_response("401 Unauthorized" if status == 401 else "403 Forbidden",
                       [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *headers])
        return [body]
    body, content_type = scrape(environ.get("HTTP_ACCEPT", ""))
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body))),
                              ("Cache-Control", "no-store")])
    return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]
