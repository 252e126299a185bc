"""`manage.py scan_code_refs PATH [--project KEY] [--format text|json]`: flag keys in a source tree.

Exit status: 0 clean, 1 when code refers to archived flags or to unknown keys in evaluation
calls (for CI), 2 on usage errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from flags.code_refs import MAX_FILE_BYTES, CodeRefReport, FlagInfo, scan_tree, to_json
from flags.models import Flag, Project


class Command(BaseCommand):
    help = ("Find flag keys referenced in a source tree: flags never referenced (cleanup hints), references to "
            "archived flags and unknown keys in evaluation calls. Exit status 1 when either is found.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="a directory (or one file) to scan")
        parser.add_argument("--project", help="only this project's flags (default: every project's)")
        parser.add_argument("--format", choices=["text", "json"], default="text", help="json for CI tools")
        parser.add_argument("--max-file-bytes", type=int, default=MAX_FILE_BYTES,
                            help=f"skip larger files (default {MAX_FILE_BYTES:,})")

    def handle(self, *args: Any, **options: Any) -> None:
        root = Path(options["path"])
        if not root.exists():
            raise CommandError(f"No such file or directory: {root}", returncode=2)
        flags = Flag.objects.select_related("project").order_by("project__key", "key")
        if options["project"]:
            project = Project.objects.filter(key=options["project"]).first()
            if project is None:
                raise CommandError(f"No project “{options['project']}”.", returncode=2)
            flags = flags.filter(project=project)
        known = [FlagInfo(key=key, stage=stage, project=project_key)
                 for key, stage, project_key in flags.values_list("key", "stage", "project__key")]
        report = CodeRefReport(scan=scan_tree(root, {flag.key for flag in known},
                                              max_file_bytes=options["max_file_bytes"]), flags=known)
        self.stdout.write(to_json(report) if options["format"] == "json" else report.as_text())
        if report.exit_code:
            raise CommandError(f"{len(report.archived_references)} reference(s) to archived flags and "
                               f"{len(report.unknown_references)} unknown key(s) in evaluation calls.",
                               returncode=report.exit_code)
