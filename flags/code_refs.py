"""Where a source tree refers to flag keys, for cleanup hints and CI (`manage.py scan_code_refs`).

Pure Python, no Django: the command passes in the catalog's flags.

How references are found (heuristics, documented in docs/architecture.md):
- Files: Python, JavaScript/TypeScript, Go, Java, Kotlin, Ruby, YAML and JSON, by suffix.
  Skipped: version-control and tool folders, `node_modules`, virtualenvs (by name, or any
  folder holding a `pyvenv.cfg`), files over `max_file_bytes`, binary files (a NUL byte in
  the first 8 KiB), and YAML files holding `ai_featureops_contract` (the flags' own
  definitions are not uses).
- Each file is read once and scanned with one regular expression: quoted string literals
  ("…", '…', `…`) whose text could be a key; in YAML also plain values (`key: value`,
  `- value`). A literal equal to a known flag key is a reference, wherever it appears.
- A literal that is not a known key is reported only when it sits in an evaluation call:
  the name before the nearest opening parenthesis is one of EVALUATION_CALLS, and only
  a first argument such as Go's `ctx,`, or a `flag_key:` / `key=` keyword, stands between.
  Everything else (log messages, dictionary keys) is ignored: most strings are not flags.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCE_SUFFIXES = frozenset({
    ".py", ".pyi", ".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".mts", ".cts", ".go", ".java", ".kt", ".kts",
    ".rb", ".yaml", ".yml", ".json",
})
YAML_SUFFIXES = frozenset({".yaml", ".yml"})
SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".nox", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", "site-packages", ".gradle", ".idea", ".bundle",
})
MAX_FILE_BYTES = 1_000_000
SNIFF_BYTES = 8192
CONTRACT_MARKER = "ai_featureops_contract"
ARCHIVED = "archived"

# The evaluation calls of common SDKs, as the names just before "(":
EVALUATION_CALLS = (
    r"get(?:Boolean|String|Number|Integer|Double|Float|Object)(?:Value|Details)",  # OpenFeature JS, Java, Kotlin
    r"get_(?:boolean|string|number|integer|float|object)_(?:value|details)",  # OpenFeature Python
    r"fetch_(?:boolean|string|number|integer|float|object)_(?:value|details)",  # OpenFeature Ruby
    r"(?:Boolean|String|Int|Float|Object)Value(?:Details)?",  # OpenFeature Go (after `ctx,`)
    r"use(?:Boolean|String|Number|Object)FlagValue|useFlag",  # OpenFeature React and others
    r"\w*[Vv]ariation(?:_?[Dd]etail)?",  # LaunchDarkly: variation, boolVariation, bool_variation…
    r"[Ii]s_?[Ee]nabled\??|get_?[Vv]ariant",  # Unleash: isEnabled, is_enabled, getVariant
)
_CANDIDATE = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}"
_STRING = rf"""(?P<q>["'`])(?P<s>{_CANDIDATE})(?P=q)"""
_PLAIN = rf"""(?:(?<=: )|(?<=- ))(?P<p>{_CANDIDATE})(?=[ \t]*(?:\#|\r?$))"""
STRING_PATTERN = re.compile(_STRING)
YAML_PATTERN = re.compile(f"{_STRING}|{_PLAIN}", re.MULTILINE)
CALL_NAME = re.compile("|".join(EVALUATION_CALLS))
GO_CALL_NAME = re.compile(EVALUATION_CALLS[3])  # the key comes after a context argument
# What may stand between "(" and the key: Go's `ctx,`, a `flag_key:` or `key=` keyword.
CALL_ARGUMENTS = re.compile(r"\s*(?P<first>[\w.]+\s*,\s*)?(?:flag_?[Kk]ey\s*[:=]\s*|key\s*[:=]\s*)?")
CALL_WINDOW = 120


@dataclass(frozen=True)
class Reference:
    path: str  # relative to the scanned root, with "/"
    line: int
    key: str


@dataclass
class ScanResult:
    references: list[Reference] = field(default_factory=list)  # literals equal to a known key
    unknown: list[Reference] = field(default_factory=list)  # other keys in evaluation calls
    files_scanned: int = 0
    files_skipped: int = 0
    seconds: float = 0.0


def in_evaluation_call(text: str, start: int) -> bool:
    """Whether the literal at `start` is an evaluation call's key argument: walk back to the
    last "(" and read the name before it (no regex search over the window: this runs for
    every string literal that is not a known key)."""
    window = text[max(0, start - CALL_WINDOW):start]
    paren = window.rfind("(")
    arguments = CALL_ARGUMENTS.fullmatch(window, paren + 1) if paren >= 0 else None
    if arguments is None:
        return False
    end = len(window[:paren].rstrip())
    begin = end
    while begin > 0 and (window[begin - 1].isalnum() or window[begin - 1] in "_?"):
        begin -= 1
    name = GO_CALL_NAME if arguments["first"] else CALL_NAME
    return begin < end and name.fullmatch(window, begin, end) is not None


def scan_text(text: str, path: str, known_keys: Collection[str], *, yaml: bool = False) -> tuple[
        list[Reference], list[Reference]]:
    """One pass of one regular expression over one file's text."""
    references: list[Reference] = []
    unknown: list[Reference] = []
    line, position = 1, 0
    for match in (YAML_PATTERN if yaml else STRING_PATTERN).finditer(text):
        quoted = match["s"]
        key = quoted or match.groupdict()["p"]
        start = match.start()
        if key in known_keys:
            found = references
        elif quoted and in_evaluation_call(text, start):
            found = unknown
        else:
            continue
        line += text.count("\n", position, start)
        position = start
        found.append(Reference(path, line, key))
    return references, unknown


def _source_files(root: Path) -> Iterable[Path]:
    for directory, subdirectories, files in os.walk(root):
        # Pruned in place, so os.walk never descends into them.
        subdirectories[:] = sorted(
            name for name in subdirectories
            if name not in SKIP_DIRS and not os.path.exists(os.path.join(directory, name, "pyvenv.cfg")))
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in SOURCE_SUFFIXES:
                yield Path(directory, name)


def scan_tree(root: Path, known_keys: Collection[str], *, max_file_bytes: int = MAX_FILE_BYTES) -> ScanResult:
    """Every source file under `root` (or `root` itself, a file), read once."""
    started = time.perf_counter()
    known = frozenset(known_keys)
    result = ScanResult()
    files = [root] if root.is_file() else _source_files(root)
    base = root.parent if root.is_file() else root
    for path in files:
        try:
            if path.stat().st_size > max_file_bytes:
                result.files_skipped += 1
                continue
            data = path.read_bytes()
        except OSError:
            result.files_skipped += 1
            continue
        if b"\0" in data[:SNIFF_BYTES]:
            result.files_skipped += 1
            continue
        text = data.decode("utf-8", errors="replace")
        is_yaml = path.suffix.lower() in YAML_SUFFIXES
        if is_yaml and CONTRACT_MARKER in text:
            result.files_skipped += 1
            continue
        references, unknown = scan_text(text, path.relative_to(base).as_posix(), known, yaml=is_yaml)
        result.references += references
        result.unknown += unknown
        result.files_scanned += 1
    result.seconds = time.perf_counter() - started
    return result


@dataclass(frozen=True)
class FlagInfo:
    key: str
    stage: str
    project: str = ""


@dataclass
class CodeRefReport:
    """The scan read against the catalog: what CI should fail on, and what to clean up."""

    scan: ScanResult
    flags: list[FlagInfo]
    by_key: dict[str, list[Reference]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_key = {}
        for reference in self.scan.references:
            self.by_key.setdefault(reference.key, []).append(reference)

    def _archived_keys(self) -> set[str]:
        """A key is archived when every flag with that key is (keys are unique per project)."""
        stages: dict[str, set[str]] = {}
        for flag in self.flags:
            stages.setdefault(flag.key, set()).add(flag.stage)
        return {key for key, seen in stages.items() if seen == {ARCHIVED}}

    @property
    def archived_references(self) -> list[Reference]:
        archived = self._archived_keys()
        return [r for r in self.scan.references if r.key in archived]

    @property
    def unknown_references(self) -> list[Reference]:
        return self.scan.unknown

    @property
    def unreferenced(self) -> list[FlagInfo]:
        """Cleanup hints: live flags the tree never mentions."""
        return [flag for flag in self.flags if flag.stage != ARCHIVED and flag.key not in self.by_key]

    @property
    def exit_code(self) -> int:
        return 1 if self.archived_references or self.unknown_references else 0

    def as_json(self) -> dict[str, Any]:
        def refs(references: Iterable[Reference]) -> list[dict[str, Any]]:
            return [{"path": r.path, "line": r.line, "key": r.key} for r in references]

        return {
            "files_scanned": self.scan.files_scanned, "files_skipped": self.scan.files_skipped,
            "seconds": round(self.scan.seconds, 3),
            "archived_references": refs(self.archived_references),
            "unknown_references": refs(self.unknown_references),
            "unreferenced_flags": [{"key": f.key, "stage": f.stage, "project": f.project} for f in self.unreferenced],
            "references": {key: refs(found) for key, found in sorted(self.by_key.items())},
            "exit_code": self.exit_code,
        }

    def as_text(self) -> str:
        scan = self.scan
        lines = [f"Scanned {scan.files_scanned:,} files in {scan.seconds:.2f} s "
                 f"({scan.files_skipped:,} skipped: binary, too large, or flag contracts); "
                 f"{len(self.flags)} flags known."]
        if self.archived_references:
            lines += ["", "References to archived flags (these flags are no longer served; remove the code):"]
            lines += [f"  {r.path}:{r.line}  {r.key}" for r in self.archived_references]
        if self.unknown_references:
            lines += ["", "Unknown keys in evaluation calls (a typo, or a flag that does not exist here):"]
            lines += [f"  {r.path}:{r.line}  {r.key}" for r in self.unknown_references]
        if self.unreferenced:
            lines += ["", "Flags never referenced (cleanup candidates, or evaluated from elsewhere):"]
            lines += [f"  {f.key} ({f.stage}{', ' + f.project if f.project else ''})" for f in self.unreferenced]
        if self.by_key:
            lines += ["", "Referenced flags:"]
            for key, found in sorted(self.by_key.items()):
                where = ", ".join(f"{r.path}:{r.line}" for r in found[:3]) + (" …" if len(found) > 3 else "")
                lines.append(f"  {key}: {len(found)} reference{'s' if len(found) != 1 else ''} ({where})")
        lines += ["", "Clean: no archived or unknown references." if not self.exit_code else
                  f"Found {len(self.archived_references)} archived and {len(self.unknown_references)} unknown "
                  "reference(s)."]
        return "\n".join(lines)


def to_json(report: CodeRefReport) -> str:
    return json.dumps(report.as_json(), indent=2)
