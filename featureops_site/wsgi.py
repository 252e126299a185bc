"""WSGI entry point: OFREP evaluation (`/ofrep/v1/...`) is served by a lean WSGI app that
reads in-process snapshots; so is the events API (`/api/v1/events`), and so are the probes and
metrics for machines (`/healthz`, `/readyz`, `/metrics`); everything else is Django."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "featureops_site.settings")
_django = get_wsgi_application()

from featureops_site.health import with_operability  # noqa: E402 - /healthz, /readyz, /metrics
from flags.ofrep import with_ofrep  # noqa: E402 - needs Django set up first
from telemetry.api import with_telemetry  # noqa: E402 - /api/v1/events, as lean as OFREP

application = with_telemetry(with_ofrep(with_operability(_django)))
