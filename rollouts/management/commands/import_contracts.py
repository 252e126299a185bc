"""`manage.py import_contracts FILE --project KEY --actor USERNAME --reason TEXT [--dry-run]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.context import audit_context
from flags.models import Project
from rollouts.flags_as_code import import_contracts, render_report


class Command(BaseCommand):
    help = ("Import flag contracts from YAML through the console's services: prints the diff, then what applied "
            "and which change requests were opened. Exit status 1 on problems (nothing is written).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="the YAML file, or - for standard input")
        parser.add_argument("--project", required=True, help="project key, e.g. support-assistant")
        parser.add_argument("--actor", required=True,
                            help="the username the changes are made by; needs the editor role (or owning the flag)")
        parser.add_argument("--reason", required=True, help="why: kept with every change in the audit trail")
        parser.add_argument("--dry-run", action="store_true",
                            help="show the diff and what would apply or wait for approval; write nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(key=options["project"]).first()
        if project is None:
            raise CommandError(f"No project “{options['project']}”.", returncode=2)
        actor = get_user_model().objects.filter(username=options["actor"]).first()
        if actor is None or not actor.is_active:
            raise CommandError(f"No active user “{options['actor']}”.", returncode=2)
        try:
            raw = sys.stdin.buffer.read() if options["file"] == "-" else Path(options["file"]).read_bytes()
            text = raw.decode("utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot read {options['file']}: {exc.strerror}.", returncode=2) from exc
        except UnicodeDecodeError as exc:
            raise CommandError(f"{options['file']} is not UTF-8 text.") from exc
        with audit_context(user_agent="manage.py import_contracts"):
            result = import_contracts(project=project, text=text, actor=actor, reason=options["reason"],
                                      dry_run=options["dry_run"])
        self.stdout.write(render_report(result))
        for problem in result.problems:
            self.stderr.write(f"error: {problem}")
        if result.problems:
            raise CommandError(f"{len(result.problems)} problem(s) in {options['file']}; nothing was written.")
