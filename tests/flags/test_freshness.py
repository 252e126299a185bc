"""Freshness under the production server: several gunicorn worker processes, each with its
own snapshot and poller, serve a committed change within one second, without a restart."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from urllib.parse import urlparse

import pytest

from audit.services import SystemActor
from flags import services
from flags.demo import seed_demo
from flags.models import Environment, SdkKey, Targeting
from tests.factories import as_approved
from tests.servers import database_url_from_settings, gunicorn

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
ACTOR = SystemActor("tests")
FLAG = "support_ai_incident_fallback"


def _post(base: str, raw_key: str) -> tuple[int, dict]:
    url = urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)  # a new connection: any worker may answer
    try:
        conn.request("POST", f"/ofrep/v1/evaluate/flags/{FLAG}", body=json.dumps({"context": {"accountId": "a"}}),
                     headers={"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def _seconds_until_all_workers_agree(base: str, raw_key: str, is_new: Callable[[int, dict], bool],
                                     committed_at: float) -> float:
    """Sample for two seconds; the answer is when the last stale response was seen."""
    last_stale = committed_at
    while time.monotonic() - committed_at < 2.0:
        sent = time.monotonic()
        status, body = _post(base, raw_key)
        if not is_new(status, body):
            last_stale = sent
    return last_stale - committed_at


def test_committed_change__three_gunicorn_workers__all_serve_it_within_a_second() -> None:
    seed_demo()
    production = Environment.objects.get(project__key="support-assistant", key="production")
    sdk_key, raw_key = services.sdk_key_create(environment=production, name="freshness", actor=ACTOR)
    with gunicorn(database_url_from_settings(), workers=3) as base:
        # Given every worker serves the flag off (its fallback)
        answers = [_post(base, raw_key) for _ in range(30)]
        assert {(status, body["reason"], body["variant"]) for status, body in answers} == {
            (200, "DISABLED", "baseline_model")}

        # When an operator turns it on to serve human escalation (committed through the service)
        targeting = Targeting.objects.get(flag__key=FLAG, environment=production)
        as_approved(lambda: services.targeting_update(targeting=targeting, actor=ACTOR, enabled=True,
                                                      default_serve={"variation": "human_escalation"}))
        committed_at = time.monotonic()

        # Then within one second no worker serves the old answer
        lag = _seconds_until_all_workers_agree(
            base, raw_key, lambda status, body: body.get("variant") == "human_escalation", committed_at)
        assert lag < 1.0, f"a worker still served the old value {lag:.3f} s after the commit"

        # And a revoked key is refused by every worker within one second
        services.sdk_key_revoke(sdk_key=sdk_key, actor=ACTOR)
        revoked_at = time.monotonic()
        lag = _seconds_until_all_workers_agree(base, raw_key, lambda status, body: status == 403, revoked_at)
        assert lag < 1.0, f"a worker still accepted the revoked key {lag:.3f} s after the revocation"
    assert SdkKey.objects.get(pk=sdk_key.pk).revoked_at is not None
