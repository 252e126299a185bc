"""Real OpenFeature clients: the openfeature-sdk with the OFREP provider, against the
project's WSGI application served over HTTP on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from django.db import connections
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode

from audit.services import SystemActor
from featureops_site.wsgi import application
from flags import services
from flags.demo import seed_demo
from flags.models import Environment
from flags.snapshot_store import reset_store


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture
def ofrep_server(transactional_db: None) -> Iterator[tuple[str, str]]:
    seed_demo()
    environment = Environment.objects.get(project__key="support-assistant", key="production")
    _, raw_key = services.sdk_key_create(environment=environment, name="sdk test", actor=SystemActor("tests"))
    reset_store(None)
    server: WSGIServer = make_server("127.0.0.1", 0, application, handler_class=_QuietHandler)

    def serve() -> None:
        try:
            server.serve_forever()
        finally:
            connections.close_all()  # this thread's connection, so the test database can be dropped

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", raw_key
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        reset_store(None)


def test_openfeature_sdk__seed_flags__expected_values_variants_and_reasons(ofrep_server: tuple[str, str]) -> None:
    # Given an OpenFeature client using the OFREP provider with a production SDK key
    base_url, raw_key = ofrep_server
    api.set_provider(OFREPProvider(base_url, headers_factory=lambda: {"Authorization": f"Bearer {raw_key}"}))
    client = api.get_client()
    internal = EvaluationContext(targeting_key="agent-7", attributes={"accountId": "acct-internal-001"})
    other = EvaluationContext(targeting_key="agent-8", attributes={"accountId": "acct-other"})

    # When the application asks for the seed flags, Then it gets the console's decisions
    profile = client.get_object_details("support_assistant_profile", {"profile": "local"}, internal)
    assert (profile.variant, profile.reason, profile.value["profile"]) == (
        "citation_first_v4", "TARGETING_MATCH", "citation_first_v4")
    assert profile.error_code is None

    baseline = client.get_object_details("support_assistant_profile", {"profile": "local"}, other)
    # (OFREP has no DEFAULT: the default rule of a flag with rules is a targeting match; the engine's
    # own reason reaches the application as flag metadata)
    assert (baseline.variant, baseline.reason) == ("baseline_v3", "TARGETING_MATCH")
    assert baseline.flag_metadata["featureopsReason"] == "DEFAULT"

    tool_mode = client.get_string_details("support_agent_tool_mode", "none", internal)
    assert (tool_mode.value, tool_mode.reason) == ("approval_required", "TARGETING_MATCH")
    assert tool_mode.flag_metadata["ruleId"] == "internal"

    incident = client.get_string_details("support_ai_incident_fallback", "off", other)
    assert (incident.value, incident.variant, incident.reason) == ("baseline_model", "baseline_model", "DISABLED")

    beta = client.get_object_details("support_assistant_profile", {"profile": "local"},
                                     EvaluationContext(targeting_key="t", attributes={"accountId": "acct-beta-101"}))
    assert (beta.reason, beta.flag_metadata["ruleId"]) == ("SPLIT", "beta-5")

    # And errors reach the SDK as OpenFeature error codes, with the caller's default served
    missing = client.get_string_details("no_such_flag", "caller-default", other)
    assert (missing.value, missing.error_code) == ("caller-default", ErrorCode.FLAG_NOT_FOUND)
    no_unit = client.get_object_details("support_assistant_profile", {"profile": "local"},
                                        EvaluationContext(targeting_key="t", attributes={"plan": "beta"}))
    assert (no_unit.value, no_unit.error_code) == ({"profile": "local"}, ErrorCode.TARGETING_KEY_MISSING)


def test_openfeature_sdk__unknown_key__default_value_general_error(ofrep_server: tuple[str, str]) -> None:
    base_url, _ = ofrep_server
    api.set_provider(OFREPProvider(base_url, headers_factory=lambda: {"X-API-Key": "fo_srv_wrong"}))
    details = api.get_client().get_string_details("support_agent_tool_mode", "none", EvaluationContext("t"))
    assert (details.value, details.error_code) == ("none", ErrorCode.GENERAL)
