"""The OFREP API through the project's real WSGI application: bodies as the OFREP OpenAPI
file says, SDK-key authentication, ETags, every error status, no database query per request."""

from __future__ import annotations

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


def test_single__other_account__default_baseline_and_x_api_key_accepted(keys: dict[str, str]) -> None:
    response = call("POST", f"/ofrep/v1/evaluate/flags/{PROFILE}", body={"context": {"accountId": "acct-other"}},
                    headers={"X-API-Key": keys["production"]})
    assert response.status == 200
    assert (response.json()["variant"], response.json()["reason"]) == ("baseline_v3", "DEFAULT")


def test_single__flag_off__fallback_disabled(keys: dict[str, str]) -> None:
    body = evaluate(INCIDENT, keys["production"], {"accountId": "a"}).json()
    assert (body["variant"], body["value"], body["reason"]) == ("baseline_model", "baseline_model", "DISABLED")


def test_single__key_selects_environment(keys: dict[str, str]) -> None:
    production = evaluate(TOOL_MODE, keys["production"], {"accountId": "acct-other"}).json()
    development = evaluate(TOOL_MODE, keys["development"], {"accountId": "acct-other"}).json()
    assert (production["variant"], development["variant"]) == ("read_only", "approval_required")
    assert development["reason"] == "STATIC"


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
