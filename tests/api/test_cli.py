"""The `featureops` command-line client (featureops_cli) as a CI pipeline runs it: a subprocess
with nothing but the standard library (`python -S`: no site-packages), against the production
server (gunicorn) on a committed database with the demo seeded, its exit status telling the
pipeline what happened (0 nothing to do / applied, 1 invalid or refused, 2 changes / waiting for
approval, 3 unreachable or not authenticated)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from audit.constants import AuditAction
from audit.models import AuditEvent
from flags.demo import seed_demo
from flags.models import Flag
from flags.services.access_tokens import service_token_create
from rollouts.models import ChangeRequest
from tests.rollouts.flags_as_code.support import as_yaml, body
from tests.rollouts.support import BETA_WRITE, TOOL_MODE, production
from tests.servers import ROOT, database_url_from_settings, free_port, gunicorn

PROJECT = "support-assistant"


def featureops(*args: str, token: str = "", url: str = "") -> subprocess.CompletedProcess[str]:
    """The client as CI runs it, the token in the environment."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FEATUREOPS_")}
    env.update({"FEATUREOPS_TOKEN": token, "FEATUREOPS_URL": url})
    return subprocess.run([sys.executable, "-S", "-m", "featureops_cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def contracts(action: str, file: Path, *extra: str, token: str, url: str) -> subprocess.CompletedProcess[str]:
    return featureops("contracts", action, str(file), "--project", PROJECT, *extra, token=token, url=url)


def test_help__documents_the_exit_statuses() -> None:
    result = featureops("contracts", "apply", "--help")

    assert result.returncode == 0
    for line in ("0  nothing to do (plan), or everything applied (apply)",
                 "1  the document is invalid or the server refused it",
                 "2  plan: the plan has changes to make; apply: some changes wait for approval",
                 "3  the server cannot be reached", "FEATUREOPS_URL", "FEATUREOPS_TOKEN"):
        assert line in result.stdout, line


def test_plan__no_server_listening__exit_3(tmp_path: Path) -> None:
    document = tmp_path / "flags.yaml"
    document.write_text("ai_featureops_contract:\n  flag_key: support_agent_tool_mode\n", encoding="utf-8")

    result = contracts("plan", document, token="fo_svc_not-sent-anywhere", url=f"http://127.0.0.1:{free_port()}")

    assert result.returncode == 3 and "cannot reach 127.0.0.1" in result.stderr
    assert "fo_svc_not-sent-anywhere" not in result.stdout + result.stderr


def test_usage_error__exit_1_not_2() -> None:
    result = featureops("contracts", "plan", "flags.yaml")  # no --project

    assert result.returncode == 1 and "--project" in result.stderr


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_ci__plan_apply_plan_against_gunicorn__exit_codes_and_output(tmp_path: Path) -> None:
    # Given the demo on a committed database, a CI service token with the write scope, and a file
    # that renames the tool mode flag (safe) and gives beta accounts write tools in production (risky)
    seed_demo()
    project = Flag.objects.get(key=TOOL_MODE).project
    admin = get_user_model().objects.get(username="admin")
    token, raw = service_token_create(project=project, name="ci", scopes=["read", "write"], actor=admin,
                                      expires_at=timezone.now() + datetime.timedelta(days=30))
    contract = body(project, TOOL_MODE)
    contract["name"] = "Support agent tool authority"
    contract["targeting"]["production"]["rules"].append(BETA_WRITE)
    document = tmp_path / "flags.yaml"
    document.write_text(as_yaml(contract), encoding="utf-8")
    invalid = tmp_path / "invalid.yaml"
    contract["variations"][2]["value"] = 5  # a number for a string flag
    invalid.write_text(as_yaml(contract), encoding="utf-8")
    served_before = production()
    outputs = []

    with gunicorn(database_url_from_settings(), workers=2) as base:
        # When CI plans the file
        plan = contracts("plan", document, token=raw, url=base)
        outputs.append(plan)

        # Then it exits 2 (changes to make), listing them flag by flag, and writes nothing
        assert plan.returncode == 2, plan.stderr
        assert f"{TOOL_MODE} (changed)" in plan.stdout
        assert "name: Support agent tool mode → Support agent tool authority" in plan.stdout
        assert "targeting.production.rules[1]: added " in plan.stdout
        assert "=> would apply: contract: name" in plan.stdout
        assert "=> would wait for approval: targeting in Production (2 approvals: " in plan.stdout
        assert "fingerprint: " in plan.stdout
        assert not ChangeRequest.objects.exists()
        assert Flag.objects.get(key=TOOL_MODE).name == "Support agent tool mode"

        # When it applies the file
        applied = contracts("apply", document, "--reason", "Beta accounts asked for ticket writes", token=raw,
                            url=base)
        outputs.append(applied)

        # Then it exits 2: the rename applied, the widening waits for approval in a change request
        assert applied.returncode == 2, applied.stderr
        change_request = ChangeRequest.objects.get()
        assert change_request.status == ChangeRequest.Status.PENDING
        assert change_request.reason == "Beta accounts asked for ticket writes"
        assert "=> applied: contract: name" in applied.stdout
        assert f"=> waits for approval in CR-{change_request.pk}: targeting in Production" in applied.stdout
        assert f"CR-{change_request.pk} pending, 0 of 2 approval(s): {base}/p/{PROJECT}/" in applied.stdout
        assert Flag.objects.get(key=TOOL_MODE).name == "Support agent tool authority"
        served_after = production()
        assert (served_after.version, served_after.rules) == (served_before.version, served_before.rules)
        imported = AuditEvent.objects.get(action=AuditAction.CONTRACTS_IMPORTED)
        assert imported.actor_label.endswith(f" via API token ci ({token.prefix}…)")

        # When it plans the same file again
        again = contracts("plan", document, token=raw, url=base)
        outputs.append(again)

        # Then the rename is no longer a change, the widening already waits: nothing to do (exit 0)
        assert again.returncode == 0, again.stderr
        assert "name: " not in again.stdout
        assert f"=> already waits for approval in CR-{change_request.pk}: targeting in Production" in again.stdout
        assert "Nothing to write: every change already waits for approval." in again.stdout

        # When it plans an invalid file
        broken = contracts("plan", invalid, token=raw, url=base)
        outputs.append(broken)

        # Then it exits 1 and prints the problem at its path in the file
        assert broken.returncode == 1
        assert f"flags[0].variations[2].value ({TOOL_MODE}): " in broken.stderr

        # When the token is wrong
        wrong = contracts("plan", document, token=raw[:-4] + "xxxx", url=base)
        outputs.append(wrong)

        # Then it exits 3 (not authenticated)
        assert wrong.returncode == 3 and "(401 unauthorized)" in wrong.stderr

    # and the token never appears in anything the client printed
    assert all(raw not in result.stdout + result.stderr for result in outputs)
