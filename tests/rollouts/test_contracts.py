"""Flags as code: contracts exported as YAML in the seed's `ai_featureops_contract:` shape and
imported through the console's services (new flags, contract, variation and targeting
edits), with a diff first, change requests for risky governed changes, one transaction, the
command-line tools and the console pages."""

from __future__ import annotations

import copy
from io import StringIO
from typing import Any

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from flags import services as flag_services
from flags.constants import Role
from flags.models import Environment, Flag, Targeting, Variation
from rollouts.contracts import CONTRACT_KEY, export_contracts, import_contracts, parse_contracts
from rollouts.models import ChangeRequest
from tests.factories import TEST_ACTOR, grant, make_json_flag, make_project, make_string_flag
from tests.rollouts.support import BETA_WRITE, TOOL_MODE, production, user

pytestmark = pytest.mark.django_db
PROFILE = "support_assistant_profile"
IMPORT_URL = "/p/support-assistant/contracts/import/"


# --- helpers ----------------------------------------------------------------------------------


def exported(project: Any, *keys: str) -> Any:
    return yaml.safe_load(export_contracts(project=project, flag_keys=list(keys)))


def body(project: Any, key: str) -> dict[str, Any]:
    """One flag's contract as exported, ready to edit."""
    return exported(project, key)[CONTRACT_KEY]


def as_yaml(*bodies: dict[str, Any]) -> str:
    return yaml.safe_dump([{CONTRACT_KEY: b} for b in bodies], sort_keys=False)


def run(project: Any, text: str, actor: str = "owner", reason: str = "Flags as code", **kwargs: Any) -> Any:
    return import_contracts(project=project, text=text, actor=user(actor), reason=reason, **kwargs)


def catalog_state() -> dict[str, Any]:
    """Everything an import could write: rows and versions."""
    return {
        "audit": AuditEvent.objects.count(), "requests": ChangeRequest.objects.count(),
        "flags": sorted(Flag.objects.values_list("key", "version", "name")),
        "variations": sorted(Variation.objects.values_list("flag__key", "key", "name", "risk_rank")),
        "targeting": sorted(Targeting.objects.values_list("flag__key", "environment__key", "version")),
        "environments": sorted(Environment.objects.values_list("key", "version")),
    }


def problem_texts(result: Any) -> list[str]:
    return [str(p) for p in result.problems]


NEW_FLAG = {
    "flag_key": "support_answer_tone",
    "name": "Support answer tone",
    "description": "Which tone profile answers support questions.",
    "behavior_surface": "prompt_profile",
    "value_type": "string",
    "owner": "support-ai-platform",
    "owner_user": "owner",
    "fallback": "neutral",
    "first_audience": "internal_users",
    "primary_metric": "resolved_without_escalation",
    "guardrails": ["p95_latency", "support_complaint_rate"],
    "rollback_action": "Serve neutral to everyone.",
    "cleanup_rule": "Remove the losing tone after the decision.",
    "lifetime": "experiment",
    "review_date": "2031-01-31",
    "tags": ["support", "Tone"],
    "variations": [
        {"key": "neutral", "name": "Neutral", "value": "neutral", "risk_rank": 0},
        {"key": "warm", "name": "Warm", "value": "warm", "risk_rank": 1, "description": "Candidate."},
    ],
    "targeting": {
        "development": {"enabled": True, "assignment_unit": "accountId", "targets": [], "rules": [],
                        "default_serve": {"variation": "warm"}},
        "production": {"enabled": True, "assignment_unit": "accountId", "targets": [],
                       "rules": [{"id": "internal", "clauses": [{"op": "in_segment", "values": ["internal_users"]}],
                                  "serve": {"variation": "warm"}}],
                       "default_serve": {"variation": "neutral"}},
    },
}


# --- export and the round trip ----------------------------------------------------------------


def test_export__demo__a_list_in_the_seed_shape_with_our_extensions(demo) -> None:
    # When the demo project is exported
    text = export_contracts(project=demo)

    # Then it is a YAML list of ai_featureops_contract documents, seed keys first
    documents = yaml.safe_load(text)
    assert [d[CONTRACT_KEY]["flag_key"] for d in documents] == [
        "support_agent_tool_mode", "support_ai_incident_fallback", PROFILE]
    tool_mode = documents[0][CONTRACT_KEY]
    assert list(tool_mode)[:6] == ["flag_key", "name", "description", "behavior_surface", "value_type", "owner"]
    assert tool_mode["owner"] == "support-ai-platform" and tool_mode["fallback"] == "read_only"
    assert tool_mode["guardrails"] == ["denial_rate", "incident_signal"]
    assert [v["key"] for v in tool_mode["variations"]] == ["none", "read_only", "approval_required", "write"]
    assert tool_mode["variations"][3] == {"key": "write", "name": "Write tools", "value": "write", "risk_rank": 4,
                                          "description": ""}
    assert list(tool_mode["targeting"]) == ["development", "staging", "production"]
    assert tool_mode["targeting"]["production"]["rules"][0]["serve"] == {"variation": "approval_required"}
    assert documents[2][CONTRACT_KEY]["json_schema"]["title"] == "SupportAiProfile"
    # the string variation "off" survives YAML's booleans; no anchors are written
    assert "&" not in text and "*id" not in text
    incident = documents[1][CONTRACT_KEY]
    assert {"key": "off", "name": "Assistant off", "value": "off", "risk_rank": 2,
            "description": ""} in incident["variations"]


def test_export__one_flag__one_document_unknown_flag_refused(demo) -> None:
    # When one flag is exported, the file is that contract alone (as in the seed article)
    document = exported(demo, TOOL_MODE)
    assert set(document) == {CONTRACT_KEY} and document[CONTRACT_KEY]["flag_key"] == TOOL_MODE
    # An unknown flag is named
    with pytest.raises(Exception, match="No flag nope"):
        export_contracts(project=demo, flag_keys=["nope"])


def test_import__the_unchanged_export__no_changes_and_nothing_written(demo) -> None:
    # Given the demo's export
    text = export_contracts(project=demo)
    before = catalog_state()

    # When it is imported back as it is
    result = run(demo, text)

    # Then nothing changes and nothing is written, not even an audit row
    assert result.problems == [] and result.changed_plans == []
    assert [plan.changes for plan in result.plans] == [[], [], []]
    assert catalog_state() == before


# --- applying through the services ------------------------------------------------------------


def test_import__new_flag__created_development_applied_production_waits_for_approval(demo) -> None:
    # When a contract for a flag that does not exist is imported
    result = run(demo, as_yaml(NEW_FLAG), reason="Tone experiment")

    # Then the flag is created through flag_create, with its variations and contract
    assert result.problems == [] and result.applied
    flag = Flag.objects.get(key="support_answer_tone")
    assert flag.fallback_variation.key == "neutral" and flag.owner_user.username == "owner"
    assert sorted(t.name for t in flag.tags.all()) == ["support", "tone"]
    assert str(flag.review_date) == "2031-01-31" and flag.guardrail_metrics == ["p95_latency", "support_complaint_rate"]
    assert list(flag.variations.values_list("key", "risk_rank")) == [("neutral", 0), ("warm", 1)]
    # development (not governed) applies at once; production (governed) waits: turning on raises risk
    development = Targeting.objects.get(flag=flag, environment__key="development")
    assert development.enabled and development.default_serve == {"variation": "warm"}
    assert production("support_answer_tone").enabled is False
    change_request = ChangeRequest.objects.get(flag=flag)
    assert change_request.environment.key == "production" and change_request.reason == "Tone experiment"
    assert change_request.proposed["rules"][0]["id"] == "internal"
    outcomes = [o.text(dry_run=False) for o in result.plans[0].outcomes]
    assert outcomes[0] == "applied: new flag with 2 variation(s)"
    assert f"waits for approval in CR-{change_request.pk}: targeting in Production" in outcomes[-1]
    # and every step is audited, the import itself with the reason
    assert AuditEvent.objects.filter(action="flag.created", flag_id=flag.pk).count() == 1
    assert AuditEvent.objects.get(action="targeting.updated", flag_id=flag.pk).reason == "Tone experiment"
    imported = AuditEvent.objects.get(action="contracts.imported")
    assert imported.reason == "Tone experiment" and imported.actor_label.endswith("(owner)")
    assert "1 new flag(s), 0 changed; 1 change request(s) opened" in imported.summary


def test_import__risky_production_change__change_request_opened_production_unchanged(demo) -> None:
    # Given the tool mode contract with a new rule giving beta accounts write tools in production
    contract = body(demo, TOOL_MODE)
    contract["targeting"]["production"]["rules"].append(BETA_WRITE)
    before = production()

    # When it is imported
    result = run(demo, as_yaml(contract), reason="Beta accounts asked for ticket writes")

    # Then production is unchanged and a change request needing two approvals holds the rule
    assert result.problems == []
    after = production()
    assert after.version == before.version and after.rules == before.rules
    change_request = ChangeRequest.objects.get()
    assert change_request.required_approvals == 2 and change_request.escalation
    assert change_request.proposed["rules"][-1] == BETA_WRITE
    assert change_request.reason == "Beta accounts asked for ticket writes"
    assert [o.change_request_id for o in result.change_requests] == [change_request.pk]
    assert AuditEvent.objects.get(action="change_request.created").change_request_id == change_request.pk
    assert any("write (risk 4)" in note.text and note.escalates for note in result.plans[0].notes)


def test_import__safe_changes__applied_at_once_audited_with_the_reason(demo) -> None:
    # Given contract edits and a production roll-back (the internal rule removed)
    contract = body(demo, TOOL_MODE)
    contract["name"] = "Support agent tool authority"
    contract["guardrails"].append("escalation_rate")
    contract["variations"][3]["name"] = "Write tools (tickets)"
    contract["variations"].append({"key": "draft", "name": "Draft only", "value": "draft", "risk_rank": 2,
                                   "description": ""})
    contract["targeting"]["production"]["rules"] = []
    contract["targeting"]["development"]["default_serve"] = {"variation": "draft"}

    # When it is imported
    result = run(demo, as_yaml(contract), reason="Quarterly review")

    # Then everything applies at once: nothing here raises risk
    assert result.problems == [] and result.change_requests == [] and not ChangeRequest.objects.exists()
    flag = Flag.objects.get(key=TOOL_MODE)
    assert flag.name == "Support agent tool authority" and flag.guardrail_metrics[-1] == "escalation_rate"
    assert flag.variations.get(key="write").name == "Write tools (tickets)"
    assert flag.variations.get(key="draft").risk_rank == 2
    assert production().rules == []
    # audited with the reason, through the services' own rows
    assert AuditEvent.objects.get(action="flag.updated", flag_id=flag.pk).reason == "Quarterly review"
    assert AuditEvent.objects.get(action="variation.updated", flag_id=flag.pk).reason == "Quarterly review"
    assert AuditEvent.objects.filter(action="variation.created", flag_id=flag.pk).count() == 1
    assert sorted(AuditEvent.objects.filter(action="targeting.updated", flag_id=flag.pk, reason="Quarterly review")
                  .values_list("environment_label", flat=True)) == ["Development", "Production"]
    assert AuditEvent.objects.get(action="contracts.imported").reason == "Quarterly review"
    # and the next export shows exactly what was imported
    assert body(demo, TOOL_MODE) == contract


def test_import__served_value_and_fallback__held_in_requests_the_rest_saved(demo) -> None:
    # Given a new value for a variation served in production, a new fallback and a new description
    contract = body(demo, TOOL_MODE)
    contract["variations"][2]["value"] = "approval_required_v2"
    contract["fallback"] = "none"
    contract["description"] = "Tool authority of the support agent."

    # When it is imported
    result = run(demo, as_yaml(contract))

    # Then the value and the fallback wait in flag-wide requests; the description is saved
    flag = Flag.objects.get(key=TOOL_MODE)
    assert flag.description == "Tool authority of the support agent." and flag.fallback_variation.key == "read_only"
    assert flag.variations.get(key="approval_required").value == "approval_required"
    proposed = sorted(str(cr.proposed) for cr in ChangeRequest.objects.filter(kind="flag"))
    assert proposed == ["{'fallback_variation': 'none'}", "{'variations': {'approval_required': 'approval_required_v2'}}"]
    assert len(result.change_requests) == 2


def test_import__same_file_twice__open_requests_not_submitted_again(demo) -> None:
    # Given an import that opened a change request
    contract = body(demo, TOOL_MODE)
    contract["targeting"]["production"]["rules"].append(BETA_WRITE)
    run(demo, as_yaml(contract))
    before = catalog_state()

    # When the same file is imported again
    result = run(demo, as_yaml(contract))

    # Then the change is reported as already waiting, and nothing is written
    outcome = result.plans[0].outcomes[0]
    assert outcome.status == "waiting" and outcome.change_request_id == ChangeRequest.objects.get().pk
    assert not result.written and catalog_state() == before


def test_dry_run__says_what_would_happen_and_writes_nothing(demo, django_capture_on_commit_callbacks) -> None:
    # Given a risky change and a safe one
    contract = body(demo, TOOL_MODE)
    contract["name"] = "Renamed"
    contract["targeting"]["production"]["rules"].append(BETA_WRITE)
    before = catalog_state()

    # When it is imported as a dry run
    with django_capture_on_commit_callbacks() as callbacks:
        result = run(demo, as_yaml(contract), dry_run=True)

    # Then the diff and the outcome come from the services, but nothing is committed
    assert [c.path for c in result.plans[0].changes] == ["name", "targeting.production.rules[1]"]
    texts = [o.text(dry_run=True) for o in result.plans[0].outcomes]
    assert texts[0] == "would apply: contract: name"
    assert texts[1].startswith("would wait for approval: targeting in Production (2 approvals: write (risk 4)")
    assert not result.applied and catalog_state() == before
    assert callbacks == []  # no notification of the trial's change request leaves


def test_import__a_service_refuses_a_later_flag__nothing_half_written(make_user) -> None:
    # Given a project without governed environments, its editor, a string flag and a JSON flag
    project = make_project("plain", governed_production=False)
    editor = make_user("plain_editor")
    grant(project, editor, Role.EDITOR)
    make_string_flag(project)
    make_json_flag(project)
    tool_mode = exported(project, "tool_mode")[CONTRACT_KEY]
    profile = exported(project, "profile")[CONTRACT_KEY]
    tool_mode["name"] = "renamed"
    # a schema every new value matches but the stored ones do not: flag_update refuses it
    profile["json_schema"]["required"] = ["prompt", "temperature", "tone"]
    profile["json_schema"]["properties"]["tone"] = {"type": "string"}
    for variation in profile["variations"]:
        variation["value"]["tone"] = "neutral"
    before = catalog_state()

    # When both are imported in one file
    result = import_contracts(project=project, text=as_yaml(tool_mode, profile), actor=editor, reason="schema")

    # Then the refusal names the flag and the field, and the first flag's change is rolled back too
    assert not result.applied
    assert any(t.startswith("profile: json_schema: Variation") for t in problem_texts(result)), problem_texts(result)
    assert catalog_state() == before and Flag.objects.get(key="tool_mode").name == "tool mode"


# --- validation: every problem named, nothing written -----------------------------------------


def _edit(mutate: Any) -> Any:
    def text(project: Any) -> str:
        contract = copy.deepcopy(body(project, TOOL_MODE))
        result = mutate(contract)
        return result if isinstance(result, str) else as_yaml(contract)
    return text


def _set(path: str, value: Any) -> Any:
    def mutate(contract: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = contract
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return _edit(mutate)


BAD_INPUTS = {
    "malformed YAML": (lambda p: "ai_featureops_contract:\n  flag_key: x\n   name: [\n",
                       "line 3, column 8: Not valid YAML"),
    "a --- stream": (lambda p: "ai_featureops_contract: {flag_key: a}\n---\nai_featureops_contract: {flag_key: b}\n",
                     "One YAML document per file"),
    "not a contract": (lambda p: "- flag_key: x\n", "#1: Each contract is a mapping whose only key"),
    "aliases": (lambda p: "- &c {ai_featureops_contract: {flag_key: a}}\n- *c\n", "anchors and aliases"),
    "impossible date": (lambda p: "ai_featureops_contract: {flag_key: a, review_date: 2026-13-01}\n",
                        "month must be in 1..12"),
    "bad flag key": (lambda p: "ai_featureops_contract: {flag_key: Tool Mode}\n", "#1: flag_key: required"),
    "unknown field": (_set("colour", "blue"), f"{TOOL_MODE}: colour: unknown field"),
    "seed rollout field": (_set("rollout_path", ["internal_users"]), "rollout_path: a rollout-plan field"),
    "wrong type": (_set("name", 12), f"{TOOL_MODE}: name: must be text"),
    "unknown choice": (_set("behavior_surface", "retrieval_and_prompt_profile"), "behavior_surface: 'retrieval_"),
    "guardrails not a list": (_set("guardrails", "p95_latency"), "guardrails: must be a list of names"),
    "bad date": (_set("review_date", "next week"), "review_date: must be a date"),
    "owner not a member": (_set("owner_user", "stranger"), "owner_user: 'stranger' is not a member"),
    "value type changed": (_set("value_type", "boolean"), "value_type: cannot change"),
    "unknown fallback": (_set("fallback", "admin"), "fallback: “admin” is not one of the variations"),
    "unquoted off": (_set("variations/1/value", False), "variations.read_only.value: A string flag needs a string"),
    "negative risk": (_set("variations/3/risk_rank", -1), "variations.write.risk_rank: must be a whole number"),
    "variation deleted": (_edit(lambda c: c["variations"].pop()), "variations: write missing from the file"),
    "new variation without value": (_edit(lambda c: c["variations"].append({"key": "draft"})),
                                    "variations.draft.value: required for a new variation"),
    "unknown environment": (_set("targeting/prod", {"enabled": False}), "targeting.prod: no environment 'prod'"),
    "enabled not a boolean": (_set("targeting/production/enabled", "yes"), "targeting.production.enabled: must be"),
    "unknown variation in a rule": (_set("targeting/production/rules/0/serve", {"variation": "admin"}),
                                    "targeting.production.rules[0].serve.variation: unknown variation 'admin'"),
    "unknown segment": (_set("targeting/production/rules/0/clauses", [{"op": "in_segment", "values": ["vip"]}]),
                        "targeting.production.rules: unknown segment(s): vip"),
    "split not 100 %": (_set("targeting/production/default_serve", {"split": [{"variation": "none", "weight": 5}]}),
                        "targeting.production.default_serve.split: weights add up to"),
    "unknown targeting field": (_set("targeting/production/owner", "x"), "targeting.production.owner: unknown field"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_import__bad_input__problem_names_flag_and_path_nothing_written(demo, case: str) -> None:
    # Given a file with one kind of mistake (and, where it parses, a valid change beside it)
    make_text, expected = BAD_INPUTS[case]
    text = make_text(demo)
    before = catalog_state()

    # When it is imported
    result = run(demo, text)

    # Then the problem is named, with flag and path, and nothing is written
    assert any(expected in t for t in problem_texts(result)), problem_texts(result)
    assert not result.applied and catalog_state() == before


def test_import__schema_violation__named_and_nothing_written(demo) -> None:
    # Given a profile value that breaks the flag's JSON Schema, beside a valid rename
    contract = body(demo, PROFILE)
    contract["name"] = "Renamed"
    contract["variations"][1]["value"]["temperature"] = 9
    before = catalog_state()

    # When it is imported
    result = run(demo, as_yaml(contract))

    # Then the value's path and the schema's words are reported, and nothing is written
    assert problem_texts(result) == [f"{PROFILE}: variations.citation_first_v4.value: Value does not match the "
                                     "flag's JSON Schema: temperature: 9 is greater than the maximum of 2"]
    change = next(c for c in result.plans[0].changes if c.path.startswith("variations.citation_first_v4"))
    assert (change.path, change.before, change.after) == ("variations.citation_first_v4.value.temperature", "0.2", "9")
    assert catalog_state() == before


def test_import__without_the_roles__refused_per_flag_nothing_written(demo) -> None:
    # Given a change by the product manager (approver and viewer) and by the auditor
    contract = body(demo, TOOL_MODE)
    contract["name"] = "Renamed"
    before = catalog_state()
    for name in ("pm", "auditor", "operator"):
        # When they import it
        result = run(demo, as_yaml(contract), actor=name)
        # Then it is refused, naming the flag
        assert problem_texts(result) == [f"{TOOL_MODE}: {name} may not change this flag (it needs the editor role, "
                                         "or being the flag's owner)"]
    new = run(demo, as_yaml(NEW_FLAG), actor="pm")
    assert "pm may not create flags in support-assistant" in problem_texts(new)[0]
    assert catalog_state() == before


def test_import__no_reason__refused(demo) -> None:
    contract = body(demo, TOOL_MODE)
    contract["name"] = "Renamed"
    result = run(demo, as_yaml(contract), reason="  ")
    assert problem_texts(result) == ["reason: Say why: the reason stays with every change in the audit trail."]
    assert Flag.objects.get(key=TOOL_MODE).name == "Support agent tool mode"


def test_parse__single_mapping_or_list__same_contracts() -> None:
    one = parse_contracts("ai_featureops_contract: {flag_key: a}\n")
    listed = parse_contracts("- ai_featureops_contract: {flag_key: a}\n")
    assert one == listed == ([("a", {"flag_key": "a"})], [])
    duplicate = parse_contracts("- ai_featureops_contract: {flag_key: a}\n- ai_featureops_contract: {flag_key: a}\n")
    assert [str(p) for p in duplicate[1]] == ["a: flag_key: appears twice in the file"]


# --- management commands ----------------------------------------------------------------------


def test_export_contracts_command__stdout_and_file(demo, tmp_path) -> None:
    out = StringIO()
    call_command("export_contracts", "--project", "support-assistant", "--flag", TOOL_MODE, stdout=out)
    assert yaml.safe_load(out.getvalue())[CONTRACT_KEY]["flag_key"] == TOOL_MODE
    target = tmp_path / "contracts.yaml"
    call_command("export_contracts", "--project", "support-assistant", "--output", str(target), stderr=StringIO())
    assert len(yaml.safe_load(target.read_text())) == 3
    with pytest.raises(CommandError, match="No flag nope") as refused:
        call_command("export_contracts", "--project", "support-assistant", "--flag", "nope")
    assert refused.value.returncode == 2


def test_import_contracts_command__dry_run_then_apply_then_errors(demo, tmp_path) -> None:
    # Given a file with a risky production change
    contract = body(demo, TOOL_MODE)
    contract["targeting"]["production"]["rules"].append(BETA_WRITE)
    path = tmp_path / "tool_mode.yaml"
    path.write_text(as_yaml(contract))
    args = [str(path), "--project", "support-assistant", "--actor", "owner", "--reason", "beta writes"]

    # When it is run as a dry run, the diff and the verdict are printed and nothing is written
    out = StringIO()
    call_command("import_contracts", *args, "--dry-run", stdout=out)
    assert "targeting.production.rules[1]:" in out.getvalue()
    assert "=> would wait for approval: targeting in Production (2 approvals" in out.getvalue()
    assert "Dry run: nothing was written." in out.getvalue() and not ChangeRequest.objects.exists()

    # When it is applied, the change request is printed
    out = StringIO()
    call_command("import_contracts", *args, stdout=out)
    change_request = ChangeRequest.objects.get()
    assert f"=> waits for approval in CR-{change_request.pk}: targeting in Production" in out.getvalue()
    assert AuditEvent.objects.get(action="contracts.imported").user_agent == "manage.py import_contracts"

    # A file with problems: printed on stderr, non-zero exit, nothing written
    path.write_text("ai_featureops_contract: {flag_key: support_agent_tool_mode, colour: blue}\n")
    err = StringIO()
    with pytest.raises(CommandError, match="1 problem"):
        call_command("import_contracts", *args, stdout=StringIO(), stderr=err)
    assert "error: support_agent_tool_mode: colour: unknown field" in err.getvalue()
    # Usage errors: an unknown actor or project
    with pytest.raises(CommandError, match="No active user") as refused:
        call_command("import_contracts", str(path), "--project", "support-assistant", "--actor", "nobody",
                     "--reason", "x")
    assert refused.value.returncode == 2


# --- console ----------------------------------------------------------------------------------


def test_flag_page_and_list__export_link_for_members_import_button_for_editors(client, demo) -> None:
    client.force_login(user("auditor"))
    page = client.get(f"/p/support-assistant/flags/{TOOL_MODE}/").content.decode()
    assert f"/p/support-assistant/flags/{TOOL_MODE}/contract.yaml" in page
    assert IMPORT_URL not in client.get("/p/support-assistant/").content.decode()
    client.force_login(user("owner"))
    assert IMPORT_URL in client.get("/p/support-assistant/").content.decode()


def test_export_download__attachment_for_any_member_404_for_outsiders(client, demo, make_user) -> None:
    # When an auditor downloads a flag's contract
    client.force_login(user("auditor"))
    response = client.get(f"/p/support-assistant/flags/{TOOL_MODE}/contract.yaml")

    # Then it is a YAML attachment of that contract
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="{TOOL_MODE}.contract.yaml"'
    assert response["Content-Type"].startswith("application/yaml")
    assert yaml.safe_load(response.content)[CONTRACT_KEY]["flag_key"] == TOOL_MODE
    whole = client.get("/p/support-assistant/contracts.yaml")
    assert len(yaml.safe_load(whole.content)) == 3
    assert client.get("/p/support-assistant/flags/nope/contract.yaml").status_code == 404
    client.force_login(make_user("stranger"))
    assert client.get(f"/p/support-assistant/flags/{TOOL_MODE}/contract.yaml").status_code == 404


def test_import_page__preview_then_apply__change_request_opened(client, demo) -> None:
    # Given the owner pasting a risky production change and a rename
    client.force_login(user("owner"))
    contract = body(demo, TOOL_MODE)
    contract["name"] = "Support agent tool authority"
    contract["targeting"]["production"]["rules"].append(BETA_WRITE)
    data = {"text": as_yaml(contract), "reason": "Beta accounts asked for ticket writes", "action": "preview"}
    before = catalog_state()

    # When the first POST previews it
    preview = client.post(IMPORT_URL, data)

    # Then the diff and the verdict are shown, an Apply button carries the fingerprint, and nothing is written
    page = preview.content.decode()
    assert preview.status_code == 200 and catalog_state() == before
    assert "Support agent tool mode" in page and "Support agent tool authority" in page
    assert "targeting.production.rules[1]" in page and "would wait for approval" in page
    assert 'value="apply"' in page
    fingerprint = preview.context["result"].fingerprint
    assert f'value="{fingerprint}"' in page

    # When the second POST applies it
    applied = client.post(IMPORT_URL, {**data, "action": "apply", "fingerprint": fingerprint})

    # Then it redirects to the flag list, the rename is saved and production waits in a change request
    assert applied.status_code == 302 and applied["Location"] == "/p/support-assistant/"
    change_request = ChangeRequest.objects.get()
    assert Flag.objects.get(key=TOOL_MODE).name == "Support agent tool authority"
    assert production().rules[-1]["id"] == "internal"
    shown = client.get(applied["Location"]).content.decode()
    assert f"waits for approval in CR-{change_request.pk}" in shown
    assert AuditEvent.objects.get(action="contracts.imported").reason == "Beta accounts asked for ticket writes"


def test_import_page__catalog_moved_since_the_preview__409_and_nothing_applied(client, demo) -> None:
    client.force_login(user("owner"))
    contract = body(demo, TOOL_MODE)
    contract["name"] = "Renamed by the file"
    data = {"text": as_yaml(contract), "reason": "rename"}
    fingerprint = client.post(IMPORT_URL, data).context["result"].fingerprint
    # someone else renames the flag in between
    flag_services.flag_update(flag=Flag.objects.get(key=TOOL_MODE), actor=TEST_ACTOR, description="changed meanwhile")
    response = client.post(IMPORT_URL, {**data, "action": "apply", "fingerprint": fingerprint})
    assert response.status_code == 409 and "The catalog changed since the preview" in response.content.decode()
    assert Flag.objects.get(key=TOOL_MODE).name == "Support agent tool mode"
    assert not AuditEvent.objects.filter(action="contracts.imported").exists()


def test_import_page__problems_beside_their_field__422(client, demo) -> None:
    client.force_login(user("owner"))
    contract = body(demo, TOOL_MODE)
    contract["targeting"]["production"]["rules"][0]["serve"] = {"variation": "admin"}
    response = client.post(IMPORT_URL, {"text": as_yaml(contract), "reason": "x"})
    page = response.content.decode()
    assert response.status_code == 422 and 'value="apply"' not in page
    # the problem sits in the row of the field it is about
    row = page[page.index("targeting.production.rules[0].serve.variation"):]
    assert row.index("unknown variation &#x27;admin&#x27;") < row.index("</tr>")
    broken = client.post(IMPORT_URL, {"text": "ai_featureops_contract: [\n", "reason": "x"})
    assert broken.status_code == 422 and "Not valid YAML" in broken.content.decode()
    empty = client.post(IMPORT_URL, {"text": "", "reason": "x"})
    assert empty.status_code == 422 and "Paste contracts or choose a file." in empty.content.decode()


def test_import_page__upload_a_file__text_kept_for_apply(client, demo) -> None:
    client.force_login(user("owner"))
    contract = body(demo, TOOL_MODE)
    contract["name"] = "From a file"
    upload = SimpleUploadedFile("tool_mode.yaml", as_yaml(contract).encode(), content_type="application/yaml")
    response = client.post(IMPORT_URL, {"upload": upload, "reason": "from a file"})
    assert response.status_code == 200 and "From a file" in response.content.decode()
    assert response.context["form"].data["text"].startswith("- ai_featureops_contract:")


def test_import_page__editors_only(client, demo) -> None:
    for name in ("pm", "auditor", "operator"):
        client.force_login(user(name))
        assert client.get(IMPORT_URL).status_code == 403
        assert client.post(IMPORT_URL, {"text": "x", "reason": "y"}).status_code == 403
    client.force_login(user("owner"))
    assert client.get(IMPORT_URL).status_code == 200
