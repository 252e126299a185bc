"""Production settings: the environment README documents passes `manage.py check --deploy`, and
with it the WSGI app enforces HTTPS and serves the collected static files (whitenoise)."""

from __future__ import annotations

import http.client
import os
import re
import secrets
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from featureops_site.queues import QUEUES
from tests.servers import ROOT, gunicorn

# What a machine's environment may hold that is not a setting of ours.
_PROCESS_ENVIRONMENT = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ"}


def documented_production_environment() -> dict[str, str]:
    """The variables of README's "Production environment" block; each secret written there as
    `…` (SECRET_KEY at least) becomes a fresh random one of production strength."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^### Production environment\n.*?^```sh\n(.*?)^```", readme, re.S | re.M)
    assert block, "README.md has no '### Production environment' section with a ```sh block"
    documented = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(\S*)", block.group(1), re.M))
    assert documented.get("SECRET_KEY") == "…" and "DEBUG" not in documented
    return {key: secrets.token_urlsafe(64) if value == "…" else value for key, value in documented.items()}


def test_check_deploy__documented_production_environment__reports_nothing() -> None:
    env = {key: value for key, value in os.environ.items() if key in _PROCESS_ENVIRONMENT}
    env.update(documented_production_environment())
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_settings__proxy_ssl_header_from_environment__django_form() -> None:
    code = "import featureops_site.settings as s; print(s.SECURE_PROXY_SSL_HEADER)"
    env = {**os.environ, "SECRET_KEY": "x" * 50, "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https')"


def _get(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request, redirects not followed."""
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_static_files__production_environment_after_collectstatic__served_over_https_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the documented production environment (its own database, secret and hosts aside),
    # and the static files collected into a fresh STATIC_ROOT as a deployment does
    for key, value in documented_production_environment().items():
        if key not in {"DATABASE_URL", "SECRET_KEY", "ALLOWED_HOSTS"}:
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("STATIC_ROOT", str(tmp_path / "static"))
    monkeypatch.setenv("DEBUG", "0")
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--no-input", "-v0"], cwd=ROOT, check=True,
                   timeout=120)
    stylesheet = (ROOT / "static" / "css" / "app.css").read_bytes()
    with gunicorn(f"sqlite:///{tmp_path / 'db.sqlite3'}", workers=1, poll_seconds=0) as base:
        # When a browser asks over plain HTTP, it is sent to HTTPS
        status, headers, _ = _get(base, "/static/css/app.css")
        assert status == 301 and headers["location"].startswith("https://")
        # Then, over HTTPS (as the TLS proxy says), the file is served by the WSGI app, with HSTS
        https = {"X-Forwarded-Proto": "https"}
        status, headers, body = _get(base, "/static/css/app.css", https)
        assert status == 200 and body == stylesheet
        assert headers["content-type"].startswith("text/css")
        assert headers["strict-transport-security"].startswith("max-age=31536000")
        assert _get(base, "/static/css/missing.css", https)[0] == 404


def test_the_production_layout_runs_a_supervised_worker_for_every_queue_and_one_beat() -> None:
    units = ROOT / "deploy" / "systemd"
    worker = (units / "featureops-worker@.service").read_text()
    beat = (units / "featureops-beat.service").read_text()
    readme = (ROOT / "README.md").read_text()
    # each unit restarts its process whenever it exits
    for unit in (worker, beat):
        assert re.search(r"^Restart=always$", unit, re.M), unit
    # the worker unit consumes the queue it is instantiated for (prefixed as configured)
    assert "--queues=${CELERY_QUEUE_PREFIX}%i" in worker
    assert re.search(r"ExecStart=.* beat ", beat)
    # and the README enables one instance per queue, and the beat
    enable = re.search(r"^systemctl enable --now (.*?)\n(?!  )", readme.replace("\\\n", " "), re.M | re.S)
    assert enable, "README shows no `systemctl enable --now` line"
    enabled = set(enable.group(1).split())
    assert enabled == {f"featureops-worker@{queue}" for queue in QUEUES} | {"featureops-beat", "featureops-streams"}
    # the stream server is uvicorn on the ASGI app, bounded at shutdown (an open stream never ends by itself)
    streams = (units / "featureops-streams.service").read_text()
    assert re.search(r"^Restart=always$", streams, re.M)
    assert "uvicorn featureops_site.asgi:application" in streams and "--timeout-graceful-shutdown" in streams
