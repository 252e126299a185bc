"""Flags as code on the command line: `manage.py import_contracts`, a dry run, then applying,
then a file with problems, and usage errors."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from rollouts.models import ChangeRequest
from tests.rollouts.flags_as_code.support import as_yaml, body
from tests.rollouts.support import BETA_WRITE, TOOL_MODE

pytestmark = pytest.mark.django_db


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
