"""gunicorn settings for production:

    gunicorn -c featureops_site/gunicorn.conf.py --bind 0.0.0.0:8000 --workers 3

- /metrics sums every worker process's counters (prometheus_client's multiprocess mode): each
  process writes its values to files in PROMETHEUS_MULTIPROC_DIR. Set it to a directory of
  this server's own (one per gunicorn master, never shared by two); unset, a fresh temporary
  one is made and removed at exit. Its files are wiped at start (counters restart at zero,
  which Prometheus reads as a restart), and a worker's live gauges go when it exits.
- Log lines of gunicorn itself (boot, worker timeouts) follow LOG_FORMAT like the
  application's: JSON unless DEBUG (featureops_site/log_format.py).

Every other setting is gunicorn's own, from the command line or GUNICORN_CMD_ARGS.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

wsgi_app = "featureops_site.wsgi:application"

# Before any worker imports prometheus_client: it picks its value storage when first imported.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="featureops-metrics-")
    os.environ["FEATUREOPS_METRICS_DIR_IS_TEMPORARY"] = "1"


def _json_logs() -> bool:
    """settings.LOG_FORMAT's rule, read from the environment: the master never loads Django."""
    chosen = os.environ.get("LOG_FORMAT", "").strip().lower()
    if chosen:
        return chosen == "json"
    return os.environ.get("DEBUG", "").strip().lower() not in {"1", "true", "yes", "on"}


class ConsoleLogger(Logger):
    """gunicorn's logger, its handlers formatting as LOG_FORMAT says. Applied at every setup
    (start and reload), before the first line; access logging stays as configured (off unless
    --access-logfile), so requests pay nothing for it."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if not _json_logs():
            return
        from featureops_site.log_format import json_formatter

        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(json_formatter())


logger_class = ConsoleLogger


def on_starting(server: Any) -> None:
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):  # a previous run's processes are gone
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if os.environ.get("FEATUREOPS_METRICS_DIR_IS_TEMPORARY") == "1":
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
