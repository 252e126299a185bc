"""Flags as code through the management API (api/routers/flags_as_code.py): a plan (the console's
import tried and rolled back) and an apply (committed, through the same services and change
control), YAML or JSON bodies, problems by their path in the file, and who may import.

The demo's support_agent_tool_mode serves read_only in governed production, approval_required to
the internal segment; a rule giving beta accounts write tools (risk 4) needs two approvals there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from audit.constants import AuditAction
from audit.models import AuditEvent
from flags.constants import Role
from flags.evaluation.engine import compile_snapshot, evaluate
from flags.models import Environment, Flag
from flags.snapshot_builder import build_environment_snapshot
from rollouts.models import ChangeRequest
from tests.api.conftest import ApiClient
from tests.factories import grant, make_project
from tests.flags.support import audit_events_since, audit_mark
from tests.rollouts.flags_as_code.support import as_yaml, body, catalog_state
from tests.rollouts.support import BETA_WRITE, PROFILE, TOOL_MODE, production

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

PLAN = "/projects/support-assistant/contracts/plan"
APPLY = "/projects/support-assistant/contracts/apply"
BETA_ACCOUNT = {"targetingKey": "acct-beta-101", "accountId": "acct-beta-101", "plan": "beta"}


def via_token(client: ApiClient) -> str:
    return f" via API token ci ({client.token[:12]}…)"


def send_yaml(client: ApiClient, path: str, text: str, query: str = "",
              content_type: str = "application/yaml") -> Any:
    return client.client.post("/api/v1" + path + query, text, content_type=content_type,
                              headers={"Authorization": f"Bearer {client.token}"})


def safe_and_risky(demo: Any) -> str:
    """The tool mode's contract renamed (safe) with beta accounts given write tools in production (risky)."""
    contract = body(demo, TOOL_MODE)
    contract["name"] = "Support agent tool authority"
    contract["targeting"]["production"]["rules"].append(BETA_WRITE)
    return as_yaml(contract)


def served_in_production(flag_key: str, context: dict[str, Any]) -> str | None:
    environment = Environment.objects.get(project__key="support-assistant", key="production")
    return evaluate(compile_snapshot(build_environment_snapshot(environment.pk)), flag_key, context).variant


def field(plan: dict[str, Any], flag_index: int, path: str) -> dict[str, Any]:
    return next(change for change in plan["flags"][flag_index]["changes"] if change["path"] == path)


# --- plan ----------------------------------------------------------------------------------------

def test_plan__safe_and_risky_change__diff_what_applies_and_what_waits_nothing_written(demo, service_api) -> None:
    # Given a CI token and a file that renames the flag and widens production
    api = service_api(("read", "write"))
    before = catalog_state()

    # When it is planned (a YAML body)
    response = send_yaml(api, PLAN, safe_and_risky(demo))

    # Then the plan shows the diff in words and as data
    assert response.status_code == 200, response.content
    plan = response.json()
    flag = plan["flags"][0]
    assert (plan["dry_run"], plan["applied"], plan["nothing_to_do"]) == (True, False, False)
    assert flag["flag"] == TOOL_MODE and flag["status"] == "changed"
    name = field(plan, 0, "name")
    assert (name["before"], name["after"]) == ("Support agent tool mode", "Support agent tool authority")
    assert name["lines"] == ["name: Support agent tool mode → Support agent tool authority"]
    rules = field(plan, 0, "targeting.production.rules")
    assert rules["before"] == production().rules and rules["after"] == [*production().rules, BETA_WRITE]
    assert rules["lines"][0].startswith("targeting.production.rules[1]: added ")
    assert any(note["escalates"] for note in flag["notes"])
    # what applies at once, and what waits for approval, why and for how many approvals
    assert flag["applies_now"] == ["contract: name"]
    [waiting] = flag["waits_for_approval"]
    assert waiting["what"] == "targeting in Production" and waiting["change_request"] is None
    assert waiting["required_approvals"] == 2 and "write" in waiting["why"]
    assert plan["summary"] == {"flags": 1, "changed": 1, "applies_now": 1, "waits_for_approval": 1,
                               "already_waiting": 0}
    # and nothing was written: no row, no version, no audit event, no change request
    assert catalog_state() == before


def test_plan__json_body__same_plan_as_the_yaml_body(demo, service_api) -> None:
    api = service_api(("read", "write"))
    text = safe_and_risky(demo)

    from_yaml = send_yaml(api, PLAN, text, content_type="text/yaml")
    from_json = api.post(PLAN, {"document": text})

    assert from_yaml.status_code == from_json.status_code == 200
    assert from_json.json() == from_yaml.json()


def test_plan__file_matches_the_catalog__nothing_to_do(demo, service_api) -> None:
    api = service_api(("read", "write"))

    response = api.post(PLAN, {"document": as_yaml(body(demo, TOOL_MODE), body(demo, PROFILE))})

    assert response.status_code == 200
    plan = response.json()
    assert plan["nothing_to_do"] is True and plan["message"].startswith("No changes")
    assert [(f["flag"], f["status"], f["changes"]) for f in plan["flags"]] == [
        (TOOL_MODE, "unchanged", []), (PROFILE, "unchanged", [])]


# --- apply -----------------------------------------------------------------------------------------

def test_apply__safe_and_risky_change__202_safe_part_applied_risky_part_in_a_change_request(demo, service_api) -> None:
    # Given production serves read_only to beta accounts
    api = service_api(("read", "write"))
    assert served_in_production(TOOL_MODE, BETA_ACCOUNT) == "read_only"
    targeting = production()
    mark = audit_mark()

    # When the file is applied, with a reason
    response = api.post(APPLY, {"document": safe_and_risky(demo), "reason": "Beta accounts asked for ticket writes"})

    # Then 202: the rename is applied, the widening waits in a change request needing two approvals
    assert response.status_code == 202, response.content
    plan = response.json()
    assert plan["applied"] is True and plan["dry_run"] is False
    assert Flag.objects.get(key=TOOL_MODE).name == "Support agent tool authority"
    change_request = ChangeRequest.objects.get()
    assert change_request.status == ChangeRequest.Status.PENDING and change_request.environment.key == "production"
    assert change_request.proposed["rules"][-1] == BETA_WRITE and change_request.required_approvals == 2
    assert change_request.reason == "Beta accounts asked for ticket writes"
    [brief] = plan["change_requests"]
    assert (brief["id"], brief["status"], brief["flag"], brief["approvals"]) == (
        change_request.pk, "pending", TOOL_MODE, 0)
    assert plan["flags"][0]["waits_for_approval"][0]["change_request"] == change_request.pk
    # and production still serves what it served
    after = production()
    assert (after.version, after.rules) == (targeting.version, targeting.rules)
    assert served_in_production(TOOL_MODE, BETA_ACCOUNT) == "read_only"
    # every write audited in the token's name, with the reason
    rows = {row.action: row for row in audit_events_since(mark)}
    for action in (AuditAction.FLAG_UPDATED, AuditAction.CHANGE_REQUEST_CREATED, AuditAction.CONTRACTS_IMPORTED):
        assert rows[action].actor_label.endswith(via_token(api)), action
        assert rows[action].reason == "Beta accounts asked for ticket writes"


def test_apply__only_safe_changes__200_everything_applied(demo, service_api) -> None:
    # Given a file that renames the flag and rolls production back (the internal rule removed)
    api = service_api(("read", "write"))
    contract = body(demo, TOOL_MODE)
    contract["name"] = "Support agent tool authority"
    contract["targeting"]["production"]["rules"] = []
    mark = audit_mark()

    # When it is applied as YAML, the reason in the query
    response = send_yaml(api, APPLY, as_yaml(contract), query="?reason=Quarterly+review")

    # Then everything applied at once
    assert response.status_code == 200, response.content
    plan = response.json()
    assert plan["flags"][0]["applies_now"] == ["contract: name", "targeting in Production"]
    assert plan["change_requests"] == [] and not ChangeRequest.objects.exists()
    assert production().rules == []
    imported = AuditEvent.objects.get(id__gt=mark, action=AuditAction.CONTRACTS_IMPORTED)
    assert imported.reason == "Quarterly review" and imported.actor_label.endswith(via_token(api))


def test_apply__same_file_twice__second_answers_202_already_waiting_writes_nothing(demo, service_api) -> None:
    # Given a file applied once (its risky part waits for approval)
    api = service_api(("read", "write"))
    text = safe_and_risky(demo)
    first = api.post(APPLY, {"document": text, "reason": "Beta accounts asked for ticket writes"})
    change_request = ChangeRequest.objects.get()
    before = catalog_state()

    # When it is applied again
    again = api.post(APPLY, {"document": text, "reason": "Beta accounts asked for ticket writes"})

    # Then nothing is written: the risky part already waits in the same request
    assert (first.status_code, again.status_code) == (202, 202)
    plan = again.json()
    assert plan["nothing_to_do"] is True and plan["flags"][0]["applies_now"] == []
    [waiting] = plan["flags"][0]["already_waiting"]
    assert waiting["change_request"] == change_request.pk and waiting["required_approvals"] == 2
    assert [brief["id"] for brief in plan["change_requests"]] == [change_request.pk]
    assert catalog_state() == before


def test_apply__without_a_reason__422_on_reason_nothing_written(demo, service_api) -> None:
    api = service_api(("read", "write"))
    before = catalog_state()

    response = api.post(APPLY, {"document": safe_and_risky(demo)})

    assert response.status_code == 422
    assert [e["path"] for e in response.json()["errors"]] == ["reason"]
    assert catalog_state() == before


def test_apply__fingerprint_of_another_diff__409_nothing_written(demo, service_api) -> None:
    # Given a plan, then the catalog moves (the flag renamed elsewhere)
    api = service_api(("read", "write"))
    text = safe_and_risky(demo)
    fingerprint = api.post(PLAN, {"document": text}).json()["fingerprint"]
    api.patch(f"/projects/support-assistant/flags/{TOOL_MODE}", {"description": "Changed meanwhile."})
    before = catalog_state()

    # When the reviewed plan is applied with its fingerprint
    response = api.post(APPLY, {"document": text, "reason": "As reviewed", "fingerprint": fingerprint})

    # Then it is refused: the diff is not the one reviewed
    assert response.status_code == 409 and response.json()["code"] == "stale_plan"
    assert catalog_state() == before


def test_apply__fingerprint_of_the_plan__applied(demo, service_api) -> None:
    api = service_api(("read", "write"))
    text = safe_and_risky(demo)
    fingerprint = api.post(PLAN, {"document": text}).json()["fingerprint"]

    response = api.post(APPLY, {"document": text, "reason": "As reviewed", "fingerprint": fingerprint})

    assert response.status_code == 202 and response.json()["fingerprint"] == fingerprint


# --- invalid documents -------------------------------------------------------------------------------

def test_plan__invalid_document__422_every_problem_by_its_path_in_the_file(demo, service_api) -> None:
    # Given a file of two contracts: the second one's third variation has a number for a string,
    # and targeting for an environment the project does not have
    api = service_api(("read", "write"))
    profile, tool_mode = body(demo, PROFILE), body(demo, TOOL_MODE)
    tool_mode["variations"][2]["value"] = 5
    tool_mode["targeting"]["qa"] = {"enabled": True}
    before = catalog_state()

    # When it is planned
    response = send_yaml(api, PLAN, as_yaml(profile, tool_mode))

    # Then 422 problem details, each error at its path in the file, naming its flag
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "invalid_document" and problem["detail"].startswith("2 problems")
    assert sorted((e["path"], e["flag"]) for e in problem["errors"]) == [
        ("flags[1].targeting.qa", TOOL_MODE), ("flags[1].variations[2].value", TOOL_MODE)]
    assert catalog_state() == before


def test_plan__items_that_are_not_contracts__paths_name_their_place(demo, service_api) -> None:
    api = service_api(("read", "write"))
    tool_mode = body(demo, TOOL_MODE)
    text = as_yaml(tool_mode) + "- flag_key: stray\n- ai_featureops_contract:\n    name: No key\n" + as_yaml(tool_mode)

    response = send_yaml(api, PLAN, text)

    assert response.status_code == 422
    assert sorted(e["path"] for e in response.json()["errors"]) == [
        "flags[1]", "flags[2].flag_key", "flags[3].flag_key"]


def test_plan__not_yaml__422_says_where(demo, service_api) -> None:
    api = service_api(("read", "write"))

    response = send_yaml(api, PLAN, "ai_featureops_contract:\n  flag_key: [unclosed\n")

    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["path"] == "" and error["message"].startswith("line ") and "Not valid YAML" in error["message"]


def test_apply__nul_character_written_as_a_yaml_escape__422_by_path_nothing_written(demo, service_api) -> None:
    # Given a description with "\0" (YAML writes it as an escape; PostgreSQL text cannot hold it)
    api = service_api(("read", "write"))
    contract = body(demo, TOOL_MODE)
    contract["variations"][1]["description"] = "read\x00only"
    before = catalog_state()

    response = api.post(APPLY, {"document": as_yaml(contract), "reason": "Quarterly review"})

    assert response.status_code == 422
    assert [(e["path"], e["flag"]) for e in response.json()["errors"]] == [
        ("flags[0].variations[1].description", TOOL_MODE)]
    assert catalog_state() == before


@pytest.mark.parametrize(("content_type", "payload", "status", "code"), [
    ("text/csv", "a,b", 415, "unsupported_media_type"),
    ("application/json", "{not json", 400, "invalid_json"),
    ("application/json", '{"text": "…"}', 422, "invalid"),
])
def test_plan__unreadable_body__clear_problem(demo, service_api, content_type, payload, status, code) -> None:
    api = service_api(("read", "write"))

    response = send_yaml(api, PLAN, payload, content_type=content_type)

    assert (response.status_code, response.json()["code"]) == (status, code)


def test_plan__document_over_one_megabyte__413(demo, service_api) -> None:
    api = service_api(("read", "write"))

    response = send_yaml(api, PLAN, "# padding\n" * 110_000)

    assert response.status_code == 413 and response.json()["code"] == "too_large"


# --- who may ------------------------------------------------------------------------------------------

def test_apply__read_only_token__403_nothing_written(demo, service_api) -> None:
    api = service_api(("read",))
    before = catalog_state()

    response = api.post(APPLY, {"document": safe_and_risky(demo), "reason": "Trying"})

    assert response.status_code == 403 and response.json()["code"] == "insufficient_scope"
    assert catalog_state() == before


def test_plan__auditor_token__403_with_the_console_rule(demo, personal_api) -> None:
    api = personal_api("auditor")

    response = api.post(PLAN, {"document": safe_and_risky(demo)})

    assert response.status_code == 403
    assert response.json()["detail"] == "Importing contracts needs the flag owner / editor role in this project."


def test_apply__token_of_another_project__404(demo, service_api: Callable[..., ApiClient]) -> None:
    other = make_project("other")
    grant(other, get_user_model().objects.get(username="admin"), Role.ADMIN)
    api = service_api(("read", "write"), project=other)
    before = catalog_state()

    response = api.post(APPLY, {"document": safe_and_risky(demo), "reason": "Trying"})

    assert response.status_code == 404
    assert catalog_state() == before


def test_openapi__both_endpoints__yaml_and_json_bodies_and_every_status(client) -> None:
    schema = client.get("/api/v1/openapi.json").json()
    for path, statuses in (("plan", {"200"}), ("apply", {"200", "202"})):
        operation = schema["paths"][f"/api/v1/projects/{{project_key}}/contracts/{path}"]["post"]
        assert set(operation["requestBody"]["content"]) == {"application/json", "application/yaml", "text/yaml"}
        assert statuses | {"401", "403", "404", "409", "413", "415", "422"} <= set(operation["responses"])
