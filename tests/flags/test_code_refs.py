"""`scan_code_refs`: flag keys referenced in a source tree, references to archived flags and
unknown keys in evaluation calls, with exit statuses for CI."""

from __future__ import annotations

import json
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from flags import services
from flags.code_refs import (
    CodeRefReport,
    FlagInfo,
    Reference,
    ScanResult,
    in_evaluation_call,
    scan_text,
    scan_tree,
)
from flags.constants import LifecycleStage
from tests.factories import TEST_ACTOR, make_project, make_string_flag

KNOWN = {"support_agent_tool_mode", "support_assistant_profile"}


def write(root: Path, name: str, content: str | bytes) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# --- finding references in one file -------------------------------------------------------------


@pytest.mark.parametrize(("name", "source"), [
    ("app.py", "mode = client.get_string_value('support_agent_tool_mode', 'read_only')\n"),
    ("app.ts", "const KEY = `support_agent_tool_mode`;\n"),
    ("main.go", 'v, _ := client.StringValue(ctx, "support_agent_tool_mode", "none", ec)\n'),
    ("Tools.java", 'String mode = client.getStringValue("support_agent_tool_mode", "none");\n'),
    ("Tools.kt", 'val mode = client.getStringValue("support_agent_tool_mode", "none")\n'),
    ("tools.rb", "mode = client.fetch_string_value(flag_key: 'support_agent_tool_mode', default_value: 'none')\n"),
    ("flags.json", '{"toolMode": "support_agent_tool_mode"}\n'),
    ("values.yaml", "agent:\n  toolFlag: support_agent_tool_mode  # evaluated server-side\n"),
    ("list.yml", "flags:\n  - support_agent_tool_mode\n"),
])
def test_scan_text__known_key_as_a_literal__a_reference_with_its_line(name: str, source: str) -> None:
    # When a file that names a flag in a string literal (or a YAML value) is scanned
    text = "# header\n" + source
    references, unknown = scan_text(text, name, KNOWN, yaml=name.endswith((".yaml", ".yml")))

    # Then it is one reference, on the right line
    line = text.count("\n", 0, text.index("support_agent_tool_mode")) + 1
    assert [(r.key, r.line) for r in references] == [("support_agent_tool_mode", line)]
    assert unknown == []


@pytest.mark.parametrize("call", [
    'client.getBooleanValue("support_agent_tol_mode", false)',  # OpenFeature JS / Java
    'client.get_string_value("support_agent_tol_mode", "none")',  # OpenFeature Python
    "client.get_boolean_details(flag_key='support_agent_tol_mode', default_value=False)",
    'client.BooleanValue(ctx, "support_agent_tol_mode", false, ec)',  # OpenFeature Go
    "client.fetch_boolean_value(flag_key: 'support_agent_tol_mode', default_value: false)",  # Ruby
    'ldClient.variation("support_agent_tol_mode", context, false)',  # LaunchDarkly
    'ld.boolVariation("support_agent_tol_mode", ctx, false)',
    'unleash.isEnabled("support_agent_tol_mode")',  # Unleash
    'unleash.is_enabled("support_agent_tol_mode")',
    "const on = useBooleanFlagValue('support_agent_tol_mode', false)",  # OpenFeature React
])
def test_scan_text__unknown_key_in_an_evaluation_call__reported(call: str) -> None:
    references, unknown = scan_text(call + "\n", "app.src", KNOWN)
    assert references == [] and unknown == [Reference("app.src", 1, "support_agent_tol_mode")]


@pytest.mark.parametrize("source", [
    'log.info("support_agent_tol_mode")',  # not an evaluation call
    'settings = {"support_agent_tol_mode": 1}',
    'client.getBooleanValue(otherKey, "support_agent_tol_mode")',  # the default, not the key
    'print("hello world", "not a key!")',
])
def test_scan_text__other_strings__ignored(source: str) -> None:
    assert scan_text(source, "a.py", KNOWN) == ([], [])


def test_in_evaluation_call__only_the_key_argument() -> None:
    text = 'client.getBooleanValue( "x", false); other("y")'
    assert in_evaluation_call(text, text.index('"x"'))
    assert not in_evaluation_call(text, text.index('"y"'))


# --- walking a tree -----------------------------------------------------------------------------


def test_scan_tree__skips_tool_folders_venvs_binaries_huge_files_and_contracts(tmp_path: Path) -> None:
    # Given a tree with one real use and the same key in places that are not code of ours
    write(tmp_path, "src/app.py", "x = client.get_string_value('support_agent_tool_mode', 'none')\n")
    for skipped in (".git/hooks/a.py", "node_modules/lib/index.js", ".venv/lib/a.py", "custom-env/lib/a.py"):
        write(tmp_path, skipped, "x = 'support_agent_tool_mode'\n")
    write(tmp_path, "custom-env/pyvenv.cfg", "home = /usr/bin\n")
    write(tmp_path, "src/blob.json", b"\x00\x01 support_agent_tool_mode")
    write(tmp_path, "src/huge.js", "const k = 'support_agent_tool_mode';\n" + "// pad\n" * 200)
    write(tmp_path, "contracts.yaml", "- ai_featureops_contract:\n    flag_key: support_agent_tool_mode\n")
    write(tmp_path, "README.md", "support_agent_tool_mode is documented here\n")

    # When it is scanned with a 1 KB limit
    result = scan_tree(tmp_path, KNOWN, max_file_bytes=1000)

    # Then only the real use counts
    assert result.references == [Reference("src/app.py", 1, "support_agent_tool_mode")]
    assert result.files_scanned == 1 and result.files_skipped == 3  # binary, huge, contract file


def test_scan_tree__ten_thousand_files__within_seconds(tmp_path: Path) -> None:
    # Given 10,000 source files of about 2 KB
    body = "def handler(request):\n    return render(request, 'page.html', {'title': 'Hello'})\n" * 25
    for index in range(10_000):
        call = f"client.get_boolean_value('flag_{index % 40}', False)\n" if index % 10 == 0 else ""
        write(tmp_path, f"pkg{index % 100}/module_{index}.py", body + call)

    # When the tree is scanned
    started = time.perf_counter()
    result = scan_tree(tmp_path, {f"flag_{n}" for n in range(20)})
    elapsed = time.perf_counter() - started

    # Then every file is read once, the references are found, and it takes seconds
    assert result.files_scanned == 10_000
    assert len(result.references) == 500 and len(result.unknown) == 500
    assert elapsed < 15, f"{elapsed:.1f} s"


def test_report__archived_unknown_and_unreferenced__exit_code() -> None:
    scan = ScanResult(
        references=[Reference("a.py", 3, "old_flag"), Reference("b.py", 1, "live_flag")],
        unknown=[], files_scanned=2)
    flags = [FlagInfo("old_flag", LifecycleStage.ARCHIVED), FlagInfo("live_flag", LifecycleStage.ACTIVE),
             FlagInfo("forgotten", LifecycleStage.RELEASED), FlagInfo("gone", LifecycleStage.ARCHIVED)]
    report = CodeRefReport(scan=scan, flags=flags)
    assert report.archived_references == [Reference("a.py", 3, "old_flag")]
    assert [f.key for f in report.unreferenced] == ["forgotten"]  # archived flags are not cleanup hints
    assert report.exit_code == 1
    assert CodeRefReport(scan=ScanResult(), flags=[]).exit_code == 0


# --- the command --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_command__clean_tree__exit_0_and_cleanup_hints(tmp_path: Path) -> None:
    # Given a project with two flags, one of them used in code
    project = make_project("shop")
    make_string_flag(project, key="checkout_mode")
    make_string_flag(project, key="legacy_banner")
    write(tmp_path, "web/app.ts", "const mode = client.getStringValue('checkout_mode', 'none');\n")

    # When the tree is scanned
    out = StringIO()
    call_command("scan_code_refs", str(tmp_path), "--project", "shop", stdout=out)

    # Then it is clean, and the unused flag is a cleanup hint
    text = out.getvalue()
    assert "checkout_mode: 1 reference (web/app.ts:1)" in text
    assert "Flags never referenced" in text and "legacy_banner (draft, shop)" in text
    assert "Clean: no archived or unknown references." in text


@pytest.mark.django_db
def test_command__archived_and_unknown_references__exit_1_with_json_for_ci(tmp_path: Path) -> None:
    # Given an archived flag still in code, and a typo in an evaluation call
    project = make_project("shop")
    make_string_flag(project, key="checkout_mode")
    old_banner = make_string_flag(project, key="old_banner")
    services.flag_archive(flag=old_banner, actor=TEST_ACTOR, reason="replaced")
    write(tmp_path, "app.py", "a = client.get_boolean_value('old_banner', False)\n"
                              "b = client.get_string_value('chekout_mode', 'none')\n"
                              "c = client.get_string_value('checkout_mode', 'none')\n")

    # When it is scanned for CI
    out = StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("scan_code_refs", str(tmp_path), "--project", "shop", "--format", "json", stdout=out)

    # Then the exit status is 1 and the JSON names both
    assert failed.value.returncode == 1
    report = json.loads(out.getvalue())
    assert report["archived_references"] == [{"path": "app.py", "line": 1, "key": "old_banner"}]
    assert report["unknown_references"] == [{"path": "app.py", "line": 2, "key": "chekout_mode"}]
    assert report["unreferenced_flags"] == [] and report["exit_code"] == 1
    assert report["references"]["checkout_mode"] == [{"path": "app.py", "line": 3, "key": "checkout_mode"}]


@pytest.mark.django_db
def test_command__usage_errors__exit_2(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="No such file or directory") as missing:
        call_command("scan_code_refs", str(tmp_path / "nope"))
    assert missing.value.returncode == 2
    with pytest.raises(CommandError, match="No project") as unknown:
        call_command("scan_code_refs", str(tmp_path), "--project", "nope")
    assert unknown.value.returncode == 2
