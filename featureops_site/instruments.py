"""Counters that the request paths keep themselves: OFREP requests and their latency, events
ingested. Everything else /metrics reports is read at scrape time (featureops_site/metrics.py).

Recording costs a dictionary lookup and an increment, no I/O: the OFREP path stays free of
database queries. Under gunicorn with several worker processes, prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by featureops_site/gunicorn.conf.py) keeps
each process's values in a memory-mapped file of that directory, and /metrics sums them.

This module imports nothing of ours, so `flags` and `telemetry` can record without depending
on the site.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

# No `*_created` series beside each counter: multiprocess mode has none, so one process alone
# (runserver) reports the same series as gunicorn.
disable_created_metrics()

# Our own registry, not prometheus_client's global one: /metrics decides what it exposes
# (in multiprocess mode, the files rather than these objects).
REGISTRY = CollectorRegistry(auto_describe=True)

OFREP_REQUESTS = Counter(
    "featureops_ofrep_requests", "OFREP requests answered, by endpoint (single, bulk, configuration, other) "
    "and HTTP status.", ["endpoint", "status"], registry=REGISTRY)
OFREP_DURATION = Histogram(
    "featureops_ofrep_request_duration_seconds", "Time to answer an OFREP request, in the application "
    "(from the WSGI call to the response body), by endpoint.", ["endpoint"], registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
EVENTS_INGESTED = Counter(
    "featureops_events_ingested", "Telemetry events received by POST /api/v1/events: accepted (stored) "
    "or rejected (invalid, answered per event). Replayed batches count nothing.", ["outcome"], registry=REGISTRY)

# Label children, looked up once per process: .labels() takes a lock and builds a key each call.
_request_counters: dict[tuple[str, int], Any] = {}
_durations: dict[str, Any] = {}


def ofrep_request_observe(endpoint: str, status: int, seconds: float) -> None:
    counter = _request_counters.get((endpoint, status))
    if counter is None:
        counter = _request_counters[(endpoint, status)] = OFREP_REQUESTS.labels(endpoint, str(status))
    duration = _durations.get(endpoint)
    if duration is None:
        duration = _durations[endpoint] = OFREP_DURATION.labels(endpoint)
    counter.inc()
    duration.observe(seconds)


def events_ingested_add(*, accepted: int, rejected: int) -> None:
    if accepted:
        EVENTS_INGESTED.labels("accepted").inc(accepted)
    if rejected:
        EVENTS_INGESTED.labels("rejected").inc(rejected)
