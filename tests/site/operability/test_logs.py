"""JSON logs: the production formatter's one object per record, what a fresh process logs with
and without DEBUG (or LOG_FORMAT), and a LOG_FORMAT the settings refuse."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import subprocess
import sys

import pytest

from audit.context import audit_context
from featureops_site.log_format import json_formatter
from tests.servers import ROOT


def test_json_formatter__record_in_a_request_with_an_exception__one_json_object() -> None:
    # Given the production formatter and a record logged inside a request's audit context
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    logger = logging.getLogger("tests.operability.json")
    logger.addHandler(handler)
    logger.propagate = False
    # (its own level: an in-process test worker earlier in the run may have raised the root's)
    logger.setLevel(logging.INFO)
    try:
        with audit_context(request_ip="192.0.2.1") as context:
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("snapshot %s failed", "production", extra={"environment_id": 7})
        logger.warning("outside a request")
    finally:
        logger.removeHandler(handler)
    # Then each line is one JSON object with the fields a log collector indexes
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert list(first)[:4] == ["timestamp", "level", "logger", "message"]
    assert first["level"] == "ERROR" and first["logger"] == "tests.operability.json"
    assert first["message"] == "snapshot production failed" and first["environment_id"] == 7
    assert first["request_id"] == str(context.correlation_id)
    assert "ValueError: boom" in first["exception"] and "Traceback" in first["exception"]
    assert datetime.datetime.fromisoformat(first["timestamp"]).utcoffset() == datetime.timedelta(0)
    assert "request_id" not in second and "exception" not in second


@pytest.mark.parametrize(("env", "json_expected"), [({"DEBUG": "0"}, True), ({"DEBUG": "1"}, False),
                                                    ({"DEBUG": "1", "LOG_FORMAT": "json"}, True),
                                                    ({"DEBUG": "0", "LOG_FORMAT": "text"}, False)])
def test_logs__real_process__json_without_debug_text_with_it(env: dict[str, str], json_expected: bool) -> None:
    # Given a fresh process configured like a deployment (or a developer's machine)
    code = ("import django, logging; django.setup(); "
            "logging.getLogger('featureops.test').warning('disk %s is full', 'var')")
    full_env = {key: value for key, value in os.environ.items() if key not in {"DEBUG", "LOG_FORMAT"}}
    full_env.update({"SECRET_KEY": "x" * 50, "DJANGO_SETTINGS_MODULE": "featureops_site.settings", **env})
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    if json_expected:
        record = json.loads(line)
        assert (record["level"], record["logger"], record["message"]) == ("WARNING", "featureops.test", "disk var is full")
    else:
        assert line.endswith("WARNING featureops.test: disk var is full")
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


def test_settings__unknown_log_format__refused_at_start() -> None:
    env = {**os.environ, "DEBUG": "1", "LOG_FORMAT": "xml"}
    result = subprocess.run([sys.executable, "-c", "import featureops_site.settings"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "LOG_FORMAT must be json or text" in result.stderr
