"""OFREP conformance (issue 18): our answers against our restatement of OFREP 0.3
(`flags/ofrep_openapi.yaml`; the protocol's own file cannot be fetched in CI).

- Real cases, in-process: each reason, each error, bulk answers (200 and 304), configuration.
  Every body validates (jsonschema, refs resolved inside the YAML) against the schema the document
  gives for that path and status, and the status is one the document lists.
- The document itself says what it must: reasons and error codes are closed lists, an event stream
  has exactly one of url and endpoint, and so on (so a valid body is not valid by vacuity).
- schemathesis, over HTTP, against the production server (gunicorn, two workers) on PostgreSQL, with
  real SDK keys of the demo: over 1,000 generated requests, valid and invalid; no 5xx and no answer
  the document does not promise (status, content type, headers, body schema).
- A chunked upload (no Content-Length) through gunicorn is read, and refused beyond the limit.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, Verbosity, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from audit.services import SystemActor
from flags import services
from flags.demo import seed_demo
from flags.models import Environment, Targeting
from flags.snapshot_store import get_store
from tests.factories import as_approved
from tests.ofrep_client import WsgiResponse, call, evaluate
from tests.servers import database_url_from_settings, gunicorn

SPEC_PATH = Path(__file__).resolve().parents[2] / "flags" / "ofrep_openapi.yaml"
BASE = "urn:featureops:ofrep"
ACTOR = SystemActor("tests")
PROFILE = "support_assistant_profile"
TOOL_MODE = "support_agent_tool_mode"
INCIDENT = "support_ai_incident_fallback"
SINGLE = "/ofrep/v1/evaluate/flags/{key}"
BULK = "/ofrep/v1/evaluate/flags"
CONFIGURATION = "/ofrep/v1/configuration"
OFREP_REASONS = {"STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "UNKNOWN"}


# --- the document --------------------------------------------------------------------------------

@cache
def _spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def _validator(pointer: str) -> Draft202012Validator:
    """A validator for the schema at `pointer` in the document, its component refs resolved."""
    registry = Registry().with_resource(BASE, Resource.from_contents(_spec(), default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{BASE}#{pointer}"}, registry=registry)


def _component(name: str) -> Draft202012Validator:
    return _validator(f"/components/schemas/{name}")


def _documented_response(path: str, method: str, status: int) -> dict[str, Any]:
    responses = _spec()["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered {status}, which the document does not list"
    response = responses[str(status)]
    if "$ref" in response:
        response = _spec()["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response


def _conforms(path: str, method: str, answer: WsgiResponse) -> None:
    """The answer's status is documented for the operation, and its body has the documented schema."""
    response = _documented_response(path, method, answer.status)
    content = response.get("content")
    if content is None:
        assert answer.body == b"", f"{answer.status} has no documented body"
        return
    assert answer.headers["Content-Type"] == "application/json"
    schema_ref = content["application/json"]["schema"]["$ref"]
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
              for e in _validator(schema_ref.removeprefix("#")).iter_errors(answer.json())]
    assert not errors, f"{answer.status} body does not conform to {schema_ref}: {errors}\n{answer.body[:500]!r}"
    for name, header in response.get("headers", {}).items():
        if header.get("required"):
            assert name in answer.headers, f"{answer.status} lacks the required header {name}"


# --- real cases, in-process ------------------------------------------------------------------------

@pytest.fixture
def keys(db: None, fresh_caches: None) -> dict[str, str]:
    """SDK keys of the demo's production and development, and one of production that is revoked."""
    seed_demo()
    raw = {}
    for env_key in ("production", "development"):
        environment = Environment.objects.get(project__key="support-assistant", key=env_key)
        raw[env_key] = services.sdk_key_create(environment=environment, name="conformance", actor=ACTOR)[1]
    production = Environment.objects.get(project__key="support-assistant", key="production")
    revoked, raw["revoked"] = services.sdk_key_create(environment=production, name="revoked", actor=ACTOR)
    services.sdk_key_revoke(sdk_key=revoked, actor=ACTOR)
    # One individual target in development, so that a target match is among the cases.
    as_approved(lambda: services.targeting_update(
        targeting=Targeting.objects.get(flag__key=INCIDENT, environment__key="development"), actor=ACTOR,
        targets=[{"variation": "human_escalation", "values": ["acct-vip"]}]))
    get_store().refresh()
    return raw


SUCCESS_CASES = [  # (environment, flag, context, the OFREP reason, the engine's reason)
    ("development", TOOL_MODE, {"accountId": "acct-1"}, "STATIC", "STATIC"),
    ("production", PROFILE, {"accountId": "acct-internal-001"}, "TARGETING_MATCH", "TARGETING_MATCH"),
    ("production", PROFILE, {"accountId": "acct-other"}, "TARGETING_MATCH", "DEFAULT"),
    ("development", INCIDENT, {"accountId": "acct-vip"}, "TARGETING_MATCH", "TARGETING_MATCH"),
    ("development", INCIDENT, {"accountId": "acct-1"}, "TARGETING_MATCH", "DEFAULT"),
    ("production", PROFILE, {"accountId": "acct-beta-101", "targetingKey": "u"}, "SPLIT", "SPLIT"),
    ("production", INCIDENT, {}, "DISABLED", "DISABLED"),
]


@pytest.mark.parametrize(("environment", "flag", "context", "reason", "engine_reason"), SUCCESS_CASES)
def test_single__each_reason__body_conforms_and_reason_mapped(keys: dict[str, str], environment: str, flag: str,
                                                               context: dict[str, Any], reason: str,
                                                               engine_reason: str) -> None:
    answer = evaluate(flag, keys[environment], context)
    assert answer.status == 200
    _conforms(SINGLE, "post", answer)
    assert (answer.json()["reason"], answer.json()["metadata"]["featureopsReason"]) == (reason, engine_reason)


ERROR_CASES = [  # (path, body, headers or the key to use, status, errorCode or None)
    (f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", "{not json", "production", 400, "PARSE_ERROR"),
    (f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", '{"context": {"n": NaN}}', "production", 400, "PARSE_ERROR"),
    (f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", '{"context": 7}', "production", 400, "INVALID_CONTEXT"),
    (f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", '{"context": {"targetingKey": 7}}', "production", 400,
     "INVALID_CONTEXT"),
    (f"/ofrep/v1/evaluate/flags/{PROFILE}", '{"context": {"plan": "beta"}}', "production", 400,
     "TARGETING_KEY_MISSING"),
    ("/ofrep/v1/evaluate/flags/no_such_flag", "{}", "production", 404, "FLAG_NOT_FOUND"),
    (f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", "{}", None, 401, None),
    (f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", "{}", "unknown", 401, None),
    (f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", "{}", "revoked", 403, None),
    (f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", '{"context": {"p": "' + "x" * 70_000 + '"}}', "production", 413,
     None),
    (BULK, "[]", "production", 400, "PARSE_ERROR"),
    (BULK, '{"context": {"n": -Infinity}}', "production", 400, "PARSE_ERROR"),
    (BULK, '{"context": []}', "production", 400, "INVALID_CONTEXT"),
    (BULK, "{}", None, 401, None),
    (BULK, "{}", "revoked", 403, None),
    (BULK, '{"context": {"p": "' + "x" * 70_000 + '"}}', "production", 413, None),
]


@pytest.mark.parametrize(("path", "body", "credential", "status", "code"), ERROR_CASES)
def test_errors__body_conforms_to_the_documented_error(keys: dict[str, str], path: str, body: str,
                                                       credential: str | None, status: int, code: str | None) -> None:
    headers = {} if credential is None else {"X-API-Key": keys.get(credential, "fo_srv_unknown")}
    answer = call("POST", path, body=body, headers=headers)
    assert answer.status == status
    _conforms(BULK if path == BULK else SINGLE, "post", answer)
    assert answer.json().get("errorCode") == code and answer.json()["errorDetails"]


def test_bulk__200_each_environment_and_304__conform(keys: dict[str, str]) -> None:
    reasons: set[str] = set()
    for environment, context in (("production", {"accountId": "acct-beta-101"}), ("production", {"plan": "beta"}),
                                 ("development", {"accountId": "acct-vip"})):
        answer = evaluate(None, keys[environment], context)
        assert answer.status == 200
        _conforms(BULK, "post", answer)
        reasons |= {flag.get("reason") or flag["errorCode"] for flag in answer.json()["flags"]}
        again = evaluate(None, keys[environment], context, headers={"If-None-Match": answer.headers["ETag"]})
        assert again.status == 304
        _conforms(BULK, "post", again)
    # per-flag errors are in the list, in the failure shape, and so are several reasons
    assert {"SPLIT", "TARGETING_KEY_MISSING", "DISABLED", "TARGETING_MATCH", "STATIC"} <= reasons


def test_configuration__200_and_401__conform(keys: dict[str, str]) -> None:
    answer = call("GET", CONFIGURATION, headers={"Authorization": f"Bearer {keys['development']}"})
    assert answer.status == 200
    _conforms(CONFIGURATION, "get", answer)
    refused = call("GET", CONFIGURATION)
    assert refused.status == 401
    _conforms(CONFIGURATION, "get", refused)


# --- the document says what it must ------------------------------------------------------------------

@pytest.mark.parametrize(("schema", "instance", "valid"), [
    ("evaluationSuccess", {"key": "k", "value": {"a": 1}, "reason": "SPLIT", "variant": "v",
                           "metadata": {"ruleId": "r", "ruleIndex": 0, "matchedTarget": True, "share": 0.5}}, True),
    ("evaluationSuccess", {"key": "k", "value": True, "reason": "DEFAULT"}, False),  # not an OFREP reason
    ("evaluationSuccess", {"key": "k", "value": True, "reason": "ERROR"}, False),
    ("evaluationSuccess", {"key": "k", "value": True, "metadata": {"nested": {"a": 1}}}, False),
    ("evaluationSuccess", {"key": "k", "value": True, "metadata": {"none": None}}, False),
    ("evaluationSuccess", {"key": "k", "value": None}, False),
    ("evaluationFailure", {"key": "k", "errorCode": "GENERAL", "errorDetails": "x"}, True),
    ("evaluationFailure", {"key": "k", "errorCode": "FLAG_NOT_FOUND"}, False),  # a 404's, not a 400's
    ("evaluationFailure", {"errorCode": "GENERAL"}, False),
    ("flagNotFound", {"key": "k", "errorCode": "FLAG_NOT_FOUND", "errorDetails": "x"}, True),
    ("flagNotFound", {"key": "k", "errorCode": "GENERAL"}, False),
    ("bulkEvaluationSuccess", {"flags": [{"key": "a", "value": 1, "reason": "STATIC"},
                                         {"key": "b", "errorCode": "TARGETING_KEY_MISSING"}],
                               "metadata": {"version": 3}, "eventStreams": [{"type": "sse", "url": "https://e.x/s"}]},
     True),
    ("bulkEvaluationSuccess", {"flags": [{"key": "a", "value": 1, "errorCode": "GENERAL"}]}, False),  # both shapes
    ("bulkEvaluationSuccess", {"flags": {}}, False),
    ("eventStream", {"type": "sse", "endpoint": {"requestUri": "/events?env=1"}, "inactivityDelaySec": 120}, True),
    ("eventStream", {"type": "sse", "endpoint": {"origin": "https://e.x", "requestUri": "/s"}}, True),
    ("eventStream", {"type": "sse"}, False),  # neither url nor endpoint
    ("eventStream", {"type": "sse", "url": "https://e.x/s", "endpoint": {"requestUri": "/s"}}, False),  # both
    ("eventStream", {"type": "sse", "endpoint": {"requestUri": "events"}}, False),  # not starting with "/"
    ("eventStream", {"type": "sse", "url": "https://e.x/s", "inactivityDelaySec": 0}, False),
    ("eventStream", {"url": "https://e.x/s"}, False),  # no type
    ("sseEventData", {"type": "refetchEvaluation", "etag": "\"v7\"", "lastModified": 1_700_000_000}, True),
    ("sseEventData", {"type": "refetchEvaluation", "lastModified": "Tue, 14 Nov 2023 22:13:20 GMT"}, True),
    ("sseEventData", {"type": "refetchEvaluation", "lastModified": -1}, False),
    ("sseEventData", {"etag": "x"}, False),
    ("bulkEvaluationFailure", {"errorCode": "INVALID_CONTEXT"}, True),
    ("bulkEvaluationFailure", {"errorDetails": "x"}, False),
])
def test_document__component_schemas__accept_and_refuse_as_ofrep_says(schema: str, instance: Any,
                                                                       valid: bool) -> None:
    assert _component(schema).is_valid(instance) is valid


def test_document__paths_parameters_and_security_as_ofrep_0_3() -> None:
    spec = _spec()
    assert spec["openapi"].startswith("3.1") and set(spec["paths"]) == {SINGLE, BULK, CONFIGURATION}
    bulk = spec["paths"][BULK]["post"]
    parameters = {(p["in"], p["name"]): p["schema"] for p in bulk["parameters"]}
    assert set(parameters) == {("header", "If-None-Match"), ("query", "flagConfigEtag"),
                               ("query", "flagConfigLastModified")}
    last_modified = _validator("/paths/~1ofrep~1v1~1evaluate~1flags/post/parameters/2/schema")
    assert [last_modified.is_valid(v) for v in (0, 1_700_000_000, "2024-01-01T00:00:00Z", -1, 1.5)] == [
        True, True, True, False, False]
    assert {"200", "304", "400", "401", "403", "429", "500"} <= set(bulk["responses"])
    assert bulk["responses"]["200"]["headers"]["ETag"]["required"] is True
    assert {"200", "400", "401", "403", "404", "429", "500"} <= set(spec["paths"][SINGLE]["post"]["responses"])
    schemes = spec["components"]["securitySchemes"]
    assert (schemes["BearerAuth"]["scheme"], schemes["ApiKeyAuth"]["name"]) == ("bearer", "X-API-Key")
    assert spec["components"]["schemas"]["reason"]["enum"] == ["STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED",
                                                               "UNKNOWN"]
    schemathesis.openapi.from_path(SPEC_PATH)  # a document schemathesis accepts (it checks the OpenAPI shape)


# --- generated requests against gunicorn --------------------------------------------------------------

REQUESTS_GOAL = 1_000
CONFIG = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
ACCOUNTS = ["acct-internal-001", "acct-beta-101", "acct-beta-999", "acct-other", "acct-vip", "", 7]


@pytest.fixture
def served(transactional_db: None) -> Iterator[tuple[str, dict[str, str]]]:
    """The demo, committed (the server is another process), with SDK keys; gunicorn serving it."""
    seed_demo()
    raw = {}
    for env_key in ("production", "development"):
        environment = Environment.objects.get(project__key="support-assistant", key=env_key)
        raw[env_key] = services.sdk_key_create(environment=environment, name="fuzz", actor=ACTOR)[1]
    production = Environment.objects.get(project__key="support-assistant", key="production")
    revoked, raw["revoked"] = services.sdk_key_create(environment=production, name="revoked", actor=ACTOR)
    services.sdk_key_revoke(sdk_key=revoked, actor=ACTOR)
    raw["unknown"] = "fo_srv_unknown-key"
    with gunicorn(database_url_from_settings(), workers=2) as base:
        yield base, raw


class Run:
    """Requests sent, answers by operation and status, reasons seen, distinct failures."""

    def __init__(self, base: str, keys: dict[str, str]) -> None:
        self.base, self.keys = base, keys
        self.session = requests.Session()
        self.rng = random.Random(18)  # noqa: S311 - which cases are steered to real flags, the same every run
        self.requests = 0
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.reasons: Counter[str] = Counter()
        self.etags: list[str] = []
        self.failures: dict[tuple[str, str], str] = {}
        self.failure_count: Counter[tuple[str, str]] = Counter()

    def _credentials(self) -> dict[str, str]:
        pick = self.rng.random()
        if pick < 0.6:
            return {"Authorization": f"Bearer {self.keys['production']}"}
        if pick < 0.85:
            return {"X-API-Key": self.keys["development"]}
        if pick < 0.92:
            return {"Authorization": f"Bearer {self.keys['revoked']}"}
        if pick < 0.97:
            return {"X-API-Key": self.keys["unknown"]}
        return {}

    def _steer(self, case: schemathesis.Case) -> None:
        """Most valid cases name a real flag and carry attributes the demo's rules read, so that every
        reason is reached; some bulk requests send back an ETag seen before (304)."""
        if case.meta is None or not any(c.mode == GenerationMode.POSITIVE for c in case.meta.components.values()):
            return
        if case.path_parameters and self.rng.random() < 0.8:
            case.path_parameters = {"key": self.rng.choice([PROFILE, TOOL_MODE, INCIDENT])}
        if isinstance(case.body, dict) and self.rng.random() < 0.7:
            context = dict(case.body.get("context") or {}) if isinstance(case.body.get("context"), dict) else {}
            context["accountId"] = self.rng.choice(ACCOUNTS)
            if self.rng.random() < 0.3:
                context["plan"] = "beta"
            case.body = {**case.body, "context": context}
        if case.operation.path == BULK and self.etags and self.rng.random() < 0.2:
            case.headers = {**(case.headers or {}), "If-None-Match": self.rng.choice(self.etags[-20:])}

    def send(self, case: schemathesis.Case) -> None:
        self._steer(case)
        case.headers = {**(case.headers or {}), **self._credentials()}
        label = f"{case.method.upper()} {case.operation.path}"
        response = case.call(base_url=self.base, session=self.session)
        self.requests += 1
        self.statuses[label, response.status_code] += 1
        if response.status_code == 200 and case.operation.path != CONFIGURATION:
            payload = response.json()
            for flag in payload.get("flags", [payload]):
                self.reasons[flag.get("reason") or flag.get("errorCode")] += 1
            if "ETag" in response.headers:
                self.etags.append(response.headers["ETag"])
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = (label, failure.title)
                self.failure_count[key] += 1
                self.failures.setdefault(key, str(group))

    def report(self) -> str:
        return "\n\n".join(f"=== {label}: {title} ({self.failure_count[label, title]}×)\n{text}"
                           for (label, title), text in sorted(self.failures.items()))


def _fuzz(operation: Any, mode: GenerationMode, examples: int, send: Callable[[schemathesis.Case], None]) -> None:
    @hypothesis_settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                         suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        send(case)

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (configuration has no parameters)
        assert mode == GenerationMode.NEGATIVE


@pytest.mark.postgres
def test_schemathesis__generated_requests_to_gunicorn__no_5xx_and_every_answer_documented(
        served: tuple[str, dict[str, str]]) -> None:
    # Given gunicorn serving the demo, and real SDK keys (production, development, revoked, unknown)
    base, keys = served
    run = Run(base, keys)
    schema = schemathesis.openapi.from_path(SPEC_PATH, config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]
    started = time.perf_counter()

    # When every operation gets its coverage cases, then cases drawn valid and invalid
    coverage = {operation.label: list(schema.iter_coverage_cases(
        operation, generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        generation_config=schema.config.generation)) for operation in operations}
    for cases in coverage.values():
        for case in cases:
            run.send(case)
    evaluating = [operation for operation in operations if operation.method.upper() == "POST"]
    examples = math.ceil((REQUESTS_GOAL * 1.1 - run.requests) / (2 * len(evaluating)))
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, examples if operation in evaluating else 20, run.send)
    seconds = time.perf_counter() - started

    # Then: enough requests, every reason and error reached, no 5xx, nothing undocumented
    print(f"\n{run.requests:,} requests in {seconds:.1f} s; "
          + ", ".join(f"{label} {status}: {n}" for (label, status), n in sorted(run.statuses.items()))
          + "\nreasons and per-flag errors in 200s: " + ", ".join(f"{r}: {n}" for r, n in sorted(run.reasons.items()))
          + f"\n{sum(run.failure_count.values())} failing answers, {len(run.failures)} distinct")
    assert not run.failures, f"{len(run.failures)} distinct failures:\n\n{run.report()}"
    assert run.requests >= REQUESTS_GOAL
    assert {"STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "TARGETING_KEY_MISSING"} <= set(run.reasons)
    assert set(run.reasons) <= OFREP_REASONS | {"PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT", "GENERAL"}
    statuses = {status for _, status in run.statuses}
    assert {200, 304, 400, 401, 403, 404} <= statuses and not any(status >= 500 for status in statuses)


def _chunked_post(base: str, path: str, raw_key: str, pieces: list[bytes]) -> tuple[int, dict[str, Any]]:
    url = urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        # An iterable body and no Content-Length: http.client sends Transfer-Encoding: chunked
        conn.request("POST", path, body=iter(pieces), headers={"Authorization": f"Bearer {raw_key}",
                                                                "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.postgres
def test_query_string_over_the_servers_limit__414_as_documented(served: tuple[str, dict[str, str]]) -> None:
    # Given gunicorn in front, whose request line holds at most 4,094 bytes
    base, keys = served
    host, port = base.removeprefix("http://").split(":")
    for method, path in (("POST", BULK), ("POST", f"/ofrep/v1/evaluate/flags/{TOOL_MODE}"),
                         ("GET", "/ofrep/v1/configuration")):
        # When a request's query string is longer than that (a fuzzer's, or a broken client's)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request(method, f"{path}?padding={'x' * 5_000}", body=b"{}" if method == "POST" else None,
                     headers={"Authorization": f"Bearer {keys['production']}", "Content-Type": "application/json"})
        answer = conn.getresponse()
        body = answer.read()
        conn.close()
        # Then the server answers 414 with its own page, and our OpenAPI file documents exactly that
        assert answer.status == 414 and b"URI Too Long" in body
        documented = _documented_response(path.replace(TOOL_MODE, "{key}"), method.lower(), 414)
        assert answer.getheader("Content-Type", "").startswith(next(iter(documented["content"])))


@pytest.mark.postgres
def test_chunked_upload_through_gunicorn__read__and_413_over_the_limit(served: tuple[str, dict[str, str]]) -> None:
    base, keys = served
    body = json.dumps({"context": {"accountId": "acct-internal-001", "padding": "x" * 30_000}}).encode()
    pieces = [body[i:i + 4096] for i in range(0, len(body), 4096)]
    status, answer = _chunked_post(base, f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", keys["production"], pieces)
    assert (status, answer["variant"], answer["reason"]) == (200, "approval_required", "TARGETING_MATCH")
    status, answer = _chunked_post(base, BULK, keys["production"], pieces)
    assert status == 200 and {f["key"]: f.get("variant") for f in answer["flags"]}[TOOL_MODE] == "approval_required"
    too_big = [b'{"context": {"p": "', b"x" * 70_000, b'"}}']  # over the default 64 KiB
    status, answer = _chunked_post(base, f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", keys["production"], too_big)
    assert status == 413 and answer["errorDetails"]
