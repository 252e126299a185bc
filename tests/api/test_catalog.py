"""Projects, flags, variations and targeting through the API: reads shaped as documented, writes
through the console's services and rules, stale writes refused, bad input answered by path."""

from __future__ import annotations

import pytest
from django.db import connection, reset_queries
from django.test.utils import CaptureQueriesContext

from audit.constants import AuditAction
from audit.models import AuditEvent
from flags.models import Flag, Targeting
from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db
P = "/projects/support-assistant"
TOOL_MODE = P + "/flags/support_agent_tool_mode"
NEW_FLAG = {
    "key": "answer_style", "name": "Answer style", "behavior_surface": "prompt_profile", "value_type": "string",
    "lifetime": "experiment", "fallback_variation": "plain",
    "variations": [{"key": "plain", "value": "plain"}, {"key": "cited", "value": "cited", "risk_rank": 1}],
    "tags": ["support"],
}


def test_flag_list__every_flag_with_variations_and_targeting_per_environment(demo: object,
                                                                             personal_api: object) -> None:
    body = personal_api("pm", scopes=("read",)).get(P + "/flags").json()

    keys = [f["key"] for f in body["items"]]
    assert keys == sorted(Flag.objects.filter(project=demo).values_list("key", flat=True))
    assert body["next_cursor"] is None
    tool_mode = next(f for f in body["items"] if f["key"] == "support_agent_tool_mode")
    assert [t["environment"] for t in tool_mode["targeting"]] == ["development", "staging", "production"]
    production = tool_mode["targeting"][2]
    stored = Targeting.objects.get(flag__key="support_agent_tool_mode", environment__key="production")
    assert production["governed"] is True and production["rules"] == stored.rules
    assert production["version"] == stored.version


def test_flag_list__pages_by_cursor_without_repeats(demo: object, personal_api: object) -> None:
    api = personal_api("owner")
    seen, cursor = [], None
    while True:
        body = api.get(P + "/flags", {"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
        seen += [f["key"] for f in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(Flag.objects.filter(project=demo).values_list("key", flat=True))


def test_flag_list__filters_as_the_console(demo: object, personal_api: object) -> None:
    api = personal_api("owner")

    by_surface = api.get(P + "/flags", {"surface": "agent_tools"}).json()["items"]
    by_text = api.get(P + "/flags", {"q": "incident"}).json()["items"]

    assert [f["key"] for f in by_surface] == ["support_agent_tool_mode"]
    assert [f["key"] for f in by_text] == ["support_ai_incident_fallback"]


def test_flag_list__a_forged_cursor__400_problem(demo: object, personal_api: object) -> None:
    response = personal_api("owner").get(P + "/flags", {"cursor": "not-ours"})

    assert response.status_code == 400 and response.json()["code"] == "invalid_cursor"


def test_flag_list__queries_do_not_grow_with_flags(demo: object, personal_api: object) -> None:
    api = personal_api("owner")
    api.get(P + "/flags")  # the first request of a minute writes the token's cache entries
    reset_queries()  # the log holds at most 9,000 queries: a full one would cut the captures short
    with CaptureQueriesContext(connection) as three:
        api.get(P + "/flags")
    api.post(P + "/flags", NEW_FLAG)
    api.post(P + "/flags", {**NEW_FLAG, "key": "answer_style_2"})
    reset_queries()
    with CaptureQueriesContext(connection) as five:
        body = api.get(P + "/flags").json()

    assert len(body["items"]) == 5
    assert _catalog_queries(five) == _catalog_queries(three)


def _catalog_queries(captured: CaptureQueriesContext) -> list[str]:
    """The queries a request made, less the shared cache's (rate limit, last use) and savepoints."""
    return [q["sql"].split(" WHERE ")[0] for q in captured.captured_queries
            if "featureops_cache" not in q["sql"] and "SAVEPOINT" not in q["sql"]]


def test_flag_get__etag_is_the_contract_version(demo: object, personal_api: object) -> None:
    response = personal_api("owner").get(TOOL_MODE)

    flag = Flag.objects.get(key="support_agent_tool_mode")
    assert response.status_code == 200 and response["ETag"] == f'"v{flag.version}"'


def test_flag_create__201_off_everywhere_and_audited(demo: object, personal_api: object) -> None:
    response = personal_api("owner").post(P + "/flags", NEW_FLAG)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["fallback_variation"] == "plain" and [v["key"] for v in body["variations"]] == ["plain", "cited"]
    assert all(t["enabled"] is False for t in body["targeting"])
    assert AuditEvent.objects.filter(action=AuditAction.FLAG_CREATED, target_label__contains="answer_style").exists()


def test_flag_create__by_a_viewer__403_and_nothing_made(demo: object, personal_api: object) -> None:
    response = personal_api("pm").post(P + "/flags", NEW_FLAG)  # pm: approver and viewer, not editor

    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert not Flag.objects.filter(key="answer_style").exists()


@pytest.mark.parametrize("change, path", [
    ({"fallback_variation": "missing"}, "fallback_variation"),
    ({"key": "Not A Key"}, "key"),
    ({"variations": []}, "variations"),
    ({"behavior_surface": "nonsense"}, "behavior_surface"),
])
def test_flag_create__bad_input__422_with_the_field_path(demo: object, personal_api: object, change: dict,
                                                         path: str) -> None:
    response = personal_api("owner").post(P + "/flags", {**NEW_FLAG, **change})

    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    assert path in [e["path"] for e in response.json()["errors"]]
    assert not Flag.objects.filter(key__startswith="answer_style").exists()


def test_flag_create__twice__422_not_500(demo: object, personal_api: object) -> None:
    api = personal_api("owner")
    api.post(P + "/flags", NEW_FLAG)

    response = api.post(P + "/flags", NEW_FLAG)

    assert response.status_code == 422 and "key" in [e["path"] for e in response.json()["errors"]]


def test_flag_patch__with_the_current_etag__saved_and_a_new_etag(demo: object, personal_api: object) -> None:
    api = personal_api("owner")
    tag = api.get(TOOL_MODE)["ETag"]

    response = api.patch(TOOL_MODE, {"description": "Tool authority."}, headers={"If-Match": tag})

    assert response.status_code == 200, response.content
    assert response.json()["description"] == "Tool authority." and response["ETag"] != tag


def test_flag_patch__with_a_stale_etag__412_and_unchanged(demo: object, personal_api: object) -> None:
    api = personal_api("owner")
    tag = api.get(TOOL_MODE)["ETag"]
    api.patch(TOOL_MODE, {"description": "First."}, headers={"If-Match": tag})

    response = api.patch(TOOL_MODE, {"description": "Second."}, headers={"If-Match": tag})

    assert response.status_code == 412 and response.json()["code"] == "stale_version"
    assert Flag.objects.get(key="support_agent_tool_mode").description == "First."


def test_flag_patch__null_for_a_required_field__422(demo: object, personal_api: object) -> None:
    response = personal_api("owner").patch(TOOL_MODE, {"name": None})

    assert response.status_code == 422 and [e["path"] for e in response.json()["errors"]] == ["name"]


def test_variation_create_and_delete__audited(demo: object, personal_api: object) -> None:
    api = personal_api("owner")

    created = api.post(TOOL_MODE + "/variations", {"key": "audit_only", "value": "audit_only", "risk_rank": 2})
    deleted = api.delete(TOOL_MODE + "/variations/audit_only")

    assert created.status_code == 201 and created.json()["risk_rank"] == 2
    assert deleted.status_code == 204
    assert AuditEvent.objects.filter(action=AuditAction.VARIATION_CREATED).exists()
    assert AuditEvent.objects.filter(action=AuditAction.VARIATION_DELETED).exists()


def test_variation_create__value_of_the_wrong_type__422_on_value(demo: object, personal_api: object) -> None:
    response = personal_api("owner").post(TOOL_MODE + "/variations", {"key": "num", "value": 3})

    assert response.status_code == 422 and "value" in [e["path"] for e in response.json()["errors"]]


def test_targeting_patch__ungoverned_environment__applies_at_once(demo: object, personal_api: object) -> None:
    api = personal_api("owner")

    response = api.patch(TOOL_MODE + "/targeting/development", {"default_serve": {"variation": "read_only"}})

    assert response.status_code == 200, response.content
    assert response.json()["default_serve"] == {"variation": "read_only"}
    assert response["ETag"] == f'"v{response.json()["version"]}"'


def test_targeting_patch__unknown_variation__422_with_the_path(demo: object, personal_api: object) -> None:
    response = personal_api("owner").patch(TOOL_MODE + "/targeting/development",
                                           {"default_serve": {"variation": "nope"}})

    assert response.status_code == 422
    assert any(e["path"].startswith("default_serve") for e in response.json()["errors"])


def test_targeting_patch__stale_if_match__412(demo: object, personal_api: object) -> None:
    api = personal_api("owner")
    tag = api.get(TOOL_MODE + "/targeting/development")["ETag"]
    api.patch(TOOL_MODE + "/targeting/development", {"enabled": False}, headers={"If-Match": tag})

    response = api.patch(TOOL_MODE + "/targeting/development", {"enabled": True}, headers={"If-Match": tag})

    assert response.status_code == 412


def test_targeting_patch__unknown_environment__404(demo: object, personal_api: object) -> None:
    assert personal_api("owner").patch(TOOL_MODE + "/targeting/moon", {"enabled": False}).status_code == 404


def test_api__malformed_json__a_problem_not_a_500(demo: object, personal_api: object) -> None:
    api: ApiClient = personal_api("owner")
    response = api.client.patch("/api/v1" + TOOL_MODE, "{not json", content_type="application/json",
                                headers={"Authorization": f"Bearer {api.token}"})

    assert 400 <= response.status_code < 500


def test_api__a_nul_character_anywhere__422_at_its_path_and_nothing_saved(demo: object, personal_api: object) -> None:
    api = personal_api("owner")

    in_body = api.patch(TOOL_MODE, {"description": "before\x00after"})
    nested = api.patch(TOOL_MODE + "/targeting/development", {"rules": [{"id": "r\x00"}]})
    in_query = api.get(P + "/flags", {"q": "a\x00"})

    assert [r.status_code for r in (in_body, nested, in_query)] == [422, 422, 422]
    assert in_body.json()["errors"][0]["path"] == "description"
    assert nested.json()["errors"][0]["path"] == "rules.0.id"
    assert "\x00" not in Flag.objects.get(key="support_agent_tool_mode").description


def test_api__a_path_no_operation_matches__404_problem(demo: object, personal_api: object) -> None:
    response = personal_api("owner").get("/nothing/here")

    assert response.status_code == 404 and response["Content-Type"] == "application/problem+json"
