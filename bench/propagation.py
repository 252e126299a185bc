"""Propagation benchmark: time from a committed change until every gunicorn worker serves it.
Goal: p99 under 50 ms (changes pushed by PostgreSQL LISTEN/NOTIFY; it was 1 s when only polled).

Each trial commits a targeting change through the service, then sends requests on new
connections (so any worker may answer) for 1.5 s; the trial's figure is when the last stale
answer was seen. Three workers, each listening for change notifications (flags/change_feed.py).

    python bench/propagation.py     # PostgreSQL, as bench/ofrep_http.py
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import time
from urllib.parse import urlparse

from ofrep_http import DATABASE_URL, prepare_database

TRIALS = int(os.environ.get("BENCH_TRIALS", "30"))
FLAG = "support_ai_incident_fallback"


def variant(base: str, key: str) -> str | None:
    url = urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    try:
        conn.request("POST", f"/ofrep/v1/evaluate/flags/{FLAG}", body=json.dumps({"context": {"accountId": "a"}}),
                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        return json.loads(conn.getresponse().read()).get("variant")
    finally:
        conn.close()


def main() -> None:
    key = prepare_database()
    from audit.services import SystemActor
    from flags import services
    from flags.models import Targeting
    from tests.factories import as_approved
    from tests.servers import gunicorn

    targeting = Targeting.objects.get(flag__key=FLAG, environment__key="production",
                                      flag__project__key="support-assistant")
    choices = ["human_escalation", "cached_answer"]
    lags = []
    with gunicorn(DATABASE_URL, workers=3) as base:
        for trial in range(TRIALS):
            wanted = choices[trial % 2]
            # Production is governed: the change goes in as an approved change request would apply it.
            as_approved(lambda wanted=wanted: services.targeting_update(
                targeting=targeting, actor=SystemActor("bench"), enabled=True, default_serve={"variation": wanted}))
            committed = time.monotonic()
            last_stale, samples = committed, 0
            while time.monotonic() - committed < 1.5:
                sent = time.monotonic()
                samples += 1
                if variant(base, key) != wanted:
                    last_stale = sent
            lags.append((last_stale - committed) * 1000)
    lags.sort()
    p99 = lags[min(len(lags) - 1, int(round(0.99 * (len(lags) - 1))))]
    print(f"{TRIALS} trials, 3 gunicorn workers, ~{samples} samples per trial")
    print(f"propagation: p50 {statistics.median(lags):.0f} ms, p99 {p99:.0f} ms, max {lags[-1]:.0f} ms (goal: p99 < 50 ms)")


if __name__ == "__main__":
    main()
