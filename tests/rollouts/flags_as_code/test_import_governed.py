"""Flags as code, the import through the console's services: new flags, contract, variation
and targeting edits, change requests for risky governed changes, a file imported twice, a
dry run, one transaction, and who may import (with a reason)."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from flags.constants import Role
from flags.models import Flag, Targeting
from rollouts.flags_as_code import CONTRACT_KEY, import_contracts
from rollouts.models import ChangeRequest
from tests.factories import grant, make_json_flag, make_project, make_string_flag
from tests.rollouts.flags_as_code.support import (
    NEW_FLAG,
    as_yaml,
    body,
    catalog_state,
    exported,
    problem_texts,
    run,
)
from tests.rollouts.support import BETA_WRITE, TOOL_MODE, production

pytestmark = pytest.mark.django_db


# --- applying through the services ----------------------------------------------------------


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
    outcomes = [o.text(dry_run=False) for o in result.by_flag[0].outcomes]
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
    assert any("write (risk 4)" in note.text and note.escalates for note in result.by_flag[0].notes)


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
    outcome = result.by_flag[0].outcomes[0]
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
    assert [c.path for c in result.by_flag[0].changes] == ["name", "targeting.production.rules[1]"]
    texts = [o.text(dry_run=True) for o in result.by_flag[0].outcomes]
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


# --- who may import, and why ----------------------------------------------------------------


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
