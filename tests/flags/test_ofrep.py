"""The OFREP API through the project's real WSGI application: bodies as the OFREP OpenAPI
file says, SDK-key authentication, ETags, every error status, no database query per request."""

from __future__ import annotations

import io
import json

import pytest
from django.db import OperationalError
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from audit.services import SystemActor
from flags import services
from flags.demo import seed_demo
from flags.models import Environment, Targeting
from flags.snapshot_builder import read_environment_versions
from flags.snapshot_store import SnapshotStore, get_store, reset_store
from tests.factories import as_approved
from tests.ofrep_client import call, evaluate

pytestmark = pytest.mark.django_db
ACTOR = SystemActor("tests")
PROFILE = "support_assistant_profile"
TOOL_MODE = "support_agent_tool_mode"
INCIDENT = "support_ai_incident_fallback"


@pytest.fixture(autouse=True)
def _fresh_caches(fresh_caches: None) -> None:
    """Every test here starts and ends with empty process caches (snapshots, metric ids)."""


@pytest.fixture
def keys() -> dict[str, str]:
    seed_demo()
    raw = {}
    for env_key in ("production", "development"):
        environment = Environment.objects.get(project__key="support-assistant", key=env_key)
        raw[env_key] = services.sdk_key_create(environment=environment, name="tests", actor=ACTOR)[1]
    return raw


def _targeting(flag_key: str, env_key: str) -> Targeting:
    return Targeting.objects.get(flag__key=flag_key, environment__key=env_key)


# --- single flag ---------------------------------------------------------------------------


def test_single__internal_account__candidate_by_rule(keys: dict[str, str]) -> None:
    response = evaluate(PROFILE, keys["production"], {"targetingKey": "user-1", "accountId": "acct-internal-001"})
    assert response.status == 200 and response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["key"] == PROFILE and body["variant"] == "citation_first_v4" and body["reason"] == "TARGETING_MATCH"
    assert body["value"]["prompt"] == "support_answer_citation_first_v4"
    assert body["metadata"]["ruleId"] == "internal"
    assert body["metadata"]["environmentVersion"] == Environment.objects.get(key="production").version
    # metadata values are booleans, strings or numbers only (OFREP)
    assert all(isinstance(v, bool | str | int | float) for v in body["metadata"].values())


def test_single__other_account__default_rule_is_a_targeting_match_and_x_api_key_accepted(
        keys: dict[str, str]) -> None:
    response = call("POST", f"/ofrep/v1/evaluate/flags/{PROFILE}", body={"context": {"accountId": "acct-other"}},
                    headers={"X-API-Key": keys["production"]})
    assert response.status == 200
    body = response.json()
    # The flag has rules, so the default rule is part of the targeting that chose the value (OFREP has
    # no DEFAULT); the engine's own word is kept in the metadata, beside the versions.
    assert (body["variant"], body["reason"]) == ("baseline_v3", "TARGETING_MATCH")
    assert body["metadata"]["featureopsReason"] == "DEFAULT"
    assert body["metadata"]["flagVersion"] >= 1 and "ruleId" not in body["metadata"]


def test_single__flag_off__fallback_disabled(keys: dict[str, str]) -> None:
    body = evaluate(INCIDENT, keys["production"], {"accountId": "a"}).json()
    assert (body["variant"], body["value"], body["reason"]) == ("baseline_model", "baseline_model", "DISABLED")
    assert body["metadata"]["featureopsReason"] == "DISABLED"


def test_single__key_selects_environment(keys: dict[str, str]) -> None:
    production = evaluate(TOOL_MODE, keys["production"], {"accountId": "acct-other"}).json()
    development = evaluate(TOOL_MODE, keys["development"], {"accountId": "acct-other"}).json()
    assert (production["variant"], development["variant"]) == ("read_only", "approval_required")
    assert development["reason"] == "STATIC" and development["metadata"]["featureopsReason"] == "STATIC"


def test_single__beta_split_without_assignment_unit__400_targeting_key_missing(keys: dict[str, str]) -> None:
    response = evaluate(PROFILE, keys["production"], {"targetingKey": "user-1", "plan": "beta"})
    assert response.status == 400
    assert response.json()["errorCode"] == "TARGETING_KEY_MISSING" and response.json()["key"] == PROFILE


def test_single__unknown_flag__404_flag_not_found(keys: dict[str, str]) -> None:
    response = evaluate("no_such_flag", keys["production"], {})
    assert response.status == 404
    assert response.json() == {"key": "no_such_flag", "errorCode": "FLAG_NOT_FOUND",
                               "errorDetails": "flag 'no_such_flag' was not found"}


@pytest.mark.parametrize("body,code", [
    ("{not json", "PARSE_ERROR"),
    ("[1, 2]", "PARSE_ERROR"),
    (b"\xff\xfe", "PARSE_ERROR"),
    ('{"context": "user-1"}', "INVALID_CONTEXT"),
    ('{"context": {"targetingKey": 42}}', "INVALID_CONTEXT"),
])
def test_single__bad_body__400_with_error_code_and_key(keys: dict[str, str], body: str, code: str) -> None:
    response = evaluate(TOOL_MODE, keys["production"], body=body)
    assert response.status == 400
    assert response.json()["errorCode"] == code and response.json()["key"] == TOOL_MODE
    assert response.json()["errorDetails"]


def test_single__empty_body__evaluates_with_empty_context(keys: dict[str, str]) -> None:
    response = call("POST", f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", body=b"",
                    headers={"Authorization": f"Bearer {keys['production']}"})
    assert response.status == 200 and response.json()["variant"] == "read_only"


def test_auth__missing_or_unknown_key__401(keys: dict[str, str]) -> None:
    missing = call("POST", f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", body={})
    unknown = evaluate(TOOL_MODE, "fo_srv_not-a-real-key", {})
    assert (missing.status, unknown.status) == (401, 401)
    assert "WWW-Authenticate" in missing.headers


def test_auth__revoked_key__403_after_refresh(keys: dict[str, str]) -> None:
    assert evaluate(TOOL_MODE, keys["production"], {}).status == 200
    from flags.models import SdkKey
    services.sdk_key_revoke(sdk_key=SdkKey.objects.get(environment__key="production"), actor=ACTOR)
    get_store().refresh()  # what every process's poller does within OFREP_SNAPSHOT_POLL_SECONDS
    assert evaluate(TOOL_MODE, keys["production"], {}).status == 403
    assert evaluate(TOOL_MODE, keys["development"], {}).status == 200


def test_body_over_limit__413(keys: dict[str, str], settings) -> None:
    settings.OFREP_MAX_BODY_BYTES = 1024
    response = evaluate(TOOL_MODE, keys["production"], {"targetingKey": "x" * 2000})
    assert response.status == 413 and "1024" in response.json()["errorDetails"]


def test_invalid_content_length__400(keys: dict[str, str]) -> None:
    response = evaluate(TOOL_MODE, keys["production"], {}, content_length="lots")
    assert response.status == 400


@pytest.mark.parametrize("method,path", [("GET", f"/ofrep/v1/evaluate/flags/{TOOL_MODE}"),
                                         ("PUT", "/ofrep/v1/evaluate/flags"),
                                         ("POST", "/ofrep/v1/configuration")])
def test_wrong_method__405_with_allow(keys: dict[str, str], method: str, path: str) -> None:
    response = call(method, path, headers={"X-API-Key": keys["production"]})
    assert response.status == 405 and "Allow" in response.headers


def test_unknown_ofrep_path__404_json() -> None:
    response = call("POST", "/ofrep/v1/nothing-here", body={})
    assert response.status == 404 and response.json()["errorDetails"]


def test_other_paths__still_served_by_django() -> None:
    assert call("GET", "/login/").status == 200


# --- bulk ----------------------------------------------------------------------------------


def test_bulk__every_flag_with_etag__304_when_unchanged__200_after_a_change(keys: dict[str, str]) -> None:
    context = {"targetingKey": "user-1", "accountId": "acct-internal-001"}
    first = evaluate(None, keys["production"], context)
    assert first.status == 200
    flags = {item["key"]: item for item in first.json()["flags"]}
    assert set(flags) == {PROFILE, TOOL_MODE, INCIDENT}
    assert flags[TOOL_MODE]["variant"] == "approval_required"
    etag = first.headers["ETag"]
    again = evaluate(None, keys["production"], context, headers={"If-None-Match": etag})
    assert again.status == 304 and again.body == b"" and again.headers["ETag"] == etag
    # A different context is a different answer.
    assert evaluate(None, keys["production"], {"accountId": "acct-other"}).headers["ETag"] != etag
    # After a change, the old tag no longer matches.
    services.targeting_update(targeting=_targeting(INCIDENT, "development"), actor=ACTOR, enabled=False)
    services.flag_update(flag=_targeting(INCIDENT, "production").flag, actor=ACTOR, owner_team="ops-2")
    get_store().refresh()
    changed = evaluate(None, keys["production"], context, headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag


def test_bulk__split_flag_without_unit__reported_per_flag(keys: dict[str, str]) -> None:
    response = evaluate(None, keys["production"], {"targetingKey": "user-1", "plan": "beta"})
    assert response.status == 200
    flags = {item["key"]: item for item in response.json()["flags"]}
    assert flags[PROFILE] == {"key": PROFILE, "errorCode": "TARGETING_KEY_MISSING",
                              "errorDetails": flags[PROFILE]["errorDetails"]}
    assert flags[TOOL_MODE]["variant"] == "read_only"


def test_bulk__bad_context__400_without_flags(keys: dict[str, str]) -> None:
    response = evaluate(None, keys["production"], body='{"context": []}')
    assert response.status == 400 and response.json()["errorCode"] == "INVALID_CONTEXT"


def test_configuration__capabilities(keys: dict[str, str]) -> None:
    response = call("GET", "/ofrep/v1/configuration", headers={"X-API-Key": keys["production"]})
    assert response.status == 200
    assert response.json()["capabilities"]["cacheInvalidation"]["polling"]["enabled"] is True


# --- CORS ----------------------------------------------------------------------------------


def test_cors__allowed_origin__preflight_and_response_headers(keys: dict[str, str], settings) -> None:
    settings.OFREP_CORS_ALLOWED_ORIGINS = ["https://app.example"]
    preflight = call("OPTIONS", "/ofrep/v1/evaluate/flags", headers={"Origin": "https://app.example"})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-API-Key" in preflight.headers["Access-Control-Allow-Headers"]
    response = evaluate(TOOL_MODE, keys["production"], {}, headers={"Origin": "https://app.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    other = evaluate(TOOL_MODE, keys["production"], {}, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


# --- no database per request; the last good snapshot survives the database -----------------


def test_steady_state__evaluation_requests__run_no_database_query(keys: dict[str, str],
                                                                  django_assert_num_queries) -> None:
    evaluate(TOOL_MODE, keys["production"], {})  # first request in this process loads the snapshots
    with django_assert_num_queries(0):
        for account in ("acct-internal-001", "acct-beta-101", "acct-other"):
            assert evaluate(PROFILE, keys["production"], {"accountId": account}).status == 200
            assert evaluate(None, keys["production"], {"accountId": account}).status == 200
        assert evaluate(TOOL_MODE, "fo_srv_unknown", {}).status == 401


def test_database_unreachable__last_good_snapshot_keeps_serving(keys: dict[str, str]) -> None:
    database = {"up": True}

    def read_versions() -> dict[int, int]:
        if not database["up"]:
            raise OperationalError("could not connect to server")
        return read_environment_versions()

    store = reset_store(SnapshotStore(poll_seconds=0, read_versions=read_versions))
    assert evaluate(TOOL_MODE, keys["production"], {"accountId": "acct-internal-001"}).status == 200
    database["up"] = False
    store.poll_once()  # one poll tick while the database is down
    assert store.last_error.startswith("OperationalError")
    response = evaluate(TOOL_MODE, keys["production"], {"accountId": "acct-internal-001"})
    assert response.status == 200 and response.json()["variant"] == "approval_required"


def test_database_unreachable_at_start__503_not_500(keys: dict[str, str]) -> None:
    def read_versions() -> dict[int, int]:
        raise OperationalError("could not connect to server")

    reset_store(SnapshotStore(poll_seconds=0, read_versions=read_versions))
    response = evaluate(TOOL_MODE, keys["production"], {})
    assert response.status == 503 and response.headers["Retry-After"] == "1"


@given(body=st.one_of(st.binary(max_size=200), st.text(max_size=200),
                      st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                   lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                                       max_size=3),
                                   max_leaves=10).map(lambda v: json.dumps({"context": v}))),
       flag_key=st.sampled_from([PROFILE, TOOL_MODE, INCIDENT, "missing", "a/b", "%00", ""]))
@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property__no_body_or_key_produces_a_500(keys: dict[str, str], body: object, flag_key: str) -> None:
    response = evaluate(flag_key or None, keys["production"], body=body)
    assert response.status in {200, 400, 404}
    assert isinstance(response.json(), dict)


# --- bad input (issue 15) ------------------------------------------------------------------


@pytest.mark.parametrize("opener,closer,depth", [("[", "]", 20_000), ('{"a":', "}", 8_000), ("[", "]", 100)])
@pytest.mark.parametrize("path", ["/ofrep/v1/evaluate/flags", f"/ofrep/v1/evaluate/flags/{PROFILE}"])
def test_body__nested_deep_under_limit__400_parse_error(keys: dict[str, str], path: str, opener: str,
                                                        closer: str, depth: int) -> None:
    body = '{"context":{"deep":' + opener * depth + "1" + closer * depth + "}}"
    assert len(body) < 64 * 1024
    response = call("POST", path, body=body, headers={"Authorization": f"Bearer {keys['production']}"})
    assert response.status == 400 and response.json()["errorCode"] == "PARSE_ERROR"


@pytest.mark.parametrize("path", ["/ofrep/v1/evaluate/flags", f"/ofrep/v1/evaluate/flags/{PROFILE}"])
def test_body__lone_surrogate_in_context__evaluated_not_5xx(keys: dict[str, str], path: str) -> None:
    body = json.dumps({"context": {"targetingKey": "\ud800", "\udfff": "x"}})
    response = call("POST", path, body=body, headers={"Authorization": f"Bearer {keys['production']}"})
    assert response.status < 500  # nothing is stored, so a lone surrogate is only an odd key


# --- OFREP reasons (issue 18) ----------------------------------------------------------------


def test_reasons__individual_target__targeting_match__others_default_rule_targeting_match(
        keys: dict[str, str]) -> None:
    # Given tool mode in development, static until an individual target is added
    assert evaluate(TOOL_MODE, keys["development"], {"accountId": "acct-7"}).json()["reason"] == "STATIC"
    as_approved(lambda: services.targeting_update(targeting=_targeting(TOOL_MODE, "development"), actor=ACTOR,
                                                  targets=[{"variation": "write", "values": ["acct-7"]}]))
    get_store().refresh()

    # When the targeted account and another one ask
    targeted = evaluate(TOOL_MODE, keys["development"], {"accountId": "acct-7"}).json()
    other = evaluate(TOOL_MODE, keys["development"], {"accountId": "acct-8"}).json()

    # Then both are targeting matches (the default rule now depends on the context), told apart by the
    # engine's reason in the metadata
    assert (targeted["variant"], targeted["reason"]) == ("write", "TARGETING_MATCH")
    assert targeted["metadata"]["featureopsReason"] == "TARGETING_MATCH" and targeted["metadata"]["matchedTarget"]
    assert (other["variant"], other["reason"], other["metadata"]["featureopsReason"]) == (
        "approval_required", "TARGETING_MATCH", "DEFAULT")


def test_reasons__split_by_rule_and_by_default__split(keys: dict[str, str]) -> None:
    beta = evaluate(PROFILE, keys["production"], {"accountId": "acct-beta-101"}).json()
    assert (beta["reason"], beta["metadata"]["featureopsReason"], beta["metadata"]["ruleId"]) == (
        "SPLIT", "SPLIT", "beta-5")
    as_approved(lambda: services.targeting_update(
        targeting=_targeting(TOOL_MODE, "development"), actor=ACTOR,
        default_serve={"split": [{"variation": "read_only", "weight": 50_000},
                                 {"variation": "approval_required", "weight": 50_000}]}))
    get_store().refresh()
    answers = [evaluate(TOOL_MODE, keys["development"], {"accountId": f"acct-{n}"}).json() for n in range(20)]
    assert {(a["reason"], a["metadata"]["featureopsReason"]) for a in answers} == {("SPLIT", "SPLIT")}
    assert {a["variant"] for a in answers} == {"read_only", "approval_required"}  # 20 units: both halves reached


def test_reasons__engine_reason_outside_ofrep__unknown_and_shared_result_untouched() -> None:
    from flags.evaluation.engine import EvaluationResult
    from flags.ofrep import OFREP_REASONS, _success_body

    result = EvaluationResult("k", value=True, variant="on", reason="SOMETHING_NEW", metadata={"flagVersion": 3})
    body = _success_body(result)
    assert (body["reason"], body["metadata"]) == ("UNKNOWN", {"flagVersion": 3, "featureopsReason": "SOMETHING_NEW"})
    assert result.metadata == {"flagVersion": 3}  # results are shared between requests: never written
    assert set(OFREP_REASONS.values()) <= {"STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "UNKNOWN"}


# --- bodies: non-finite numbers, chunked uploads, targetingKey --------------------------------


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
@pytest.mark.parametrize("path", ["/ofrep/v1/evaluate/flags", f"/ofrep/v1/evaluate/flags/{TOOL_MODE}"])
def test_body__non_finite_number__400_parse_error(keys: dict[str, str], path: str, number: str) -> None:
    body = '{"context": {"targetingKey": "u", "score": ' + number + "}}"
    response = call("POST", path, body=body, headers={"Authorization": f"Bearer {keys['production']}"})
    assert response.status == 400
    assert response.json()["errorCode"] == "PARSE_ERROR" and "NaN" in response.json()["errorDetails"]


def _chunked(path: str, raw_key: str, body: bytes, *, terminated: bool = True) -> tuple[int, dict]:
    """The environ gunicorn builds for a chunked upload: no CONTENT_LENGTH, input read to its end."""
    from flags.ofrep import ofrep_application

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": "", "wsgi.input": io.BytesIO(body),
               "HTTP_TRANSFER_ENCODING": "chunked", "HTTP_AUTHORIZATION": f"Bearer {raw_key}"}
    if terminated:
        environ["wsgi.input_terminated"] = True
    captured: list[str] = []
    payload = b"".join(ofrep_application(environ, lambda status, headers: captured.append(status)))
    return int(captured[0].split()[0]), json.loads(payload)


def test_body__chunked_without_length__read_to_the_end(keys: dict[str, str]) -> None:
    context = json.dumps({"context": {"accountId": "acct-internal-001", "padding": "x" * 40_000}}).encode()
    status, body = _chunked(f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", keys["production"], context)
    assert (status, body["variant"], body["reason"]) == (200, "approval_required", "TARGETING_MATCH")
    status, body = _chunked("/ofrep/v1/evaluate/flags", keys["production"], context)
    assert status == 200 and {f["key"]: f["variant"] for f in body["flags"]}[TOOL_MODE] == "approval_required"


def test_body__chunked_over_limit__413(keys: dict[str, str], settings) -> None:
    settings.OFREP_MAX_BODY_BYTES = 1024
    status, body = _chunked(f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", keys["production"],
                            json.dumps({"context": {"targetingKey": "x" * 1100}}).encode())
    assert status == 413 and "1024" in body["errorDetails"]
    exact = json.dumps({"context": {"t": "x" * (1024 - 22)}}).encode()
    assert len(exact) == 1024 and _chunked("/ofrep/v1/evaluate/flags", keys["production"], exact)[0] == 200


def test_body__no_length_and_stream_not_terminated__read_as_empty(keys: dict[str, str]) -> None:
    # A server that does not mark the stream's end (PEP 3333): reading on could block or read the next request.
    status, body = _chunked(f"/ofrep/v1/evaluate/flags/{TOOL_MODE}", keys["production"],
                            b'{"context": {"accountId": "acct-internal-001"}}', terminated=False)
    assert (status, body["variant"]) == (200, "read_only")


@pytest.mark.parametrize("targeting_key", [42, True, ["a"], {"id": "a"}, 1.5])
def test_context__targeting_key_not_a_string__400_invalid_context_single_and_bulk(
        keys: dict[str, str], targeting_key: object) -> None:
    context = {"targetingKey": targeting_key, "accountId": "acct-internal-001"}
    single = evaluate(TOOL_MODE, keys["production"], context)
    bulk = evaluate(None, keys["production"], context)
    assert (single.status, single.json()["errorCode"], single.json()["key"]) == (400, "INVALID_CONTEXT", TOOL_MODE)
    assert (bulk.status, bulk.json()["errorCode"]) == (400, "INVALID_CONTEXT") and "flags" not in bulk.json()
    assert "targetingKey" in single.json()["errorDetails"]


def test_context__split_on_targeting_key_without_one__400_targeting_key_missing(keys: dict[str, str]) -> None:
    # Given a split on targetingKey (the OpenFeature default unit) by the default rule
    as_approved(lambda: services.targeting_update(
        targeting=_targeting(TOOL_MODE, "development"), actor=ACTOR, assignment_unit="targetingKey",
        default_serve={"split": [{"variation": "read_only", "weight": 50_000},
                                 {"variation": "approval_required", "weight": 50_000}]}))
    get_store().refresh()
    # Then without a targeting key (absent or empty) it is an error, and with one a split
    for context in ({"accountId": "acct-1"}, {"targetingKey": ""}):
        response = evaluate(TOOL_MODE, keys["development"], context)
        assert (response.status, response.json()["errorCode"]) == (400, "TARGETING_KEY_MISSING")
    assert evaluate(TOOL_MODE, keys["development"], {"targetingKey": "u-1"}).json()["reason"] == "SPLIT"
