"""What recording an OFREP request for /metrics costs (featureops_site/instruments.py): one
counter increment and one histogram observation, in a process's memory (runserver, one
process) and in prometheus_client's multiprocess files (gunicorn with
featureops_site/gunicorn.conf.py). Each mode runs in a fresh interpreter, since
prometheus_client picks its storage when first imported.

    python bench/metrics_recording.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDS = 200_000
RUNS = 7


def measure() -> None:
    sys.path.insert(0, str(ROOT))
    from featureops_site.instruments import ofrep_request_observe

    runs = []
    for _ in range(RUNS):
        started = time.perf_counter()
        for _ in range(RECORDS):
            ofrep_request_observe("single", 200, 0.003)
        runs.append((time.perf_counter() - started) / RECORDS * 1e6)
    print(f"{statistics.median(runs):.2f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        measure()
        return
    results = {}
    for mode in ("in memory (one process)", "multiprocess files (gunicorn)"):
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "featureops_site.settings", "DEBUG": "1"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with tempfile.TemporaryDirectory() as directory:
            if mode.startswith("multiprocess"):
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            out = subprocess.run([sys.executable, __file__, "--measure"], env=env, capture_output=True, text=True,  # noqa: S603
                                 check=True).stdout
        results[mode] = float(out.strip())
    for mode, micros in results.items():
        print(f"recording one OFREP request, {mode}: {micros:.2f} µs (median of {RUNS} runs of {RECORDS:,})")


if __name__ == "__main__":
    main()
