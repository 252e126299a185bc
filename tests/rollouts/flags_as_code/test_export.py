"""Flags as code, the export: the demo's flags as YAML in the seed's `ai_featureops_contract:`
shape, one flag alone or the whole project, imported back unchanged; the export command and
the console's downloads."""

from __future__ import annotations

from io import StringIO

import pytest
import yaml
from django.core.management import CommandError, call_command

from rollouts.flags_as_code import CONTRACT_KEY, export_contracts
from tests.rollouts.flags_as_code.support import IMPORT_URL, PROFILE, catalog_state, exported, run
from tests.rollouts.support import TOOL_MODE, user

pytestmark = pytest.mark.django_db


# --- export and the round trip --------------------------------------------------------------


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
    assert result.problems == [] and result.changed_flags == []
    assert [flag_changes.changes for flag_changes in result.by_flag] == [[], [], []]
    assert catalog_state() == before


# --- the export command ---------------------------------------------------------------------


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


# --- console: links and downloads -----------------------------------------------------------


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
