"""`manage.py export_contracts --project KEY [--flag KEY ...] [--output FILE]`: flag contracts as YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from flags.models import Project
from rollouts.flags_as_code import export_contracts


class Command(BaseCommand):
    help = ("Export flag contracts, variations and targeting as YAML (ai_featureops_contract). One --flag gives "
            "one contract; otherwise a YAML list of them.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", required=True, help="project key, e.g. support-assistant")
        parser.add_argument("--flag", action="append", default=[], dest="flags",
                            help="a flag key (repeat for several); every flag of the project when omitted")
        parser.add_argument("--output", help="write to this file instead of standard output")

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(key=options["project"]).first()
        if project is None:
            raise CommandError(f"No project “{options['project']}”.", returncode=2)
        try:
            text = export_contracts(project=project, flag_keys=options["flags"])
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages), returncode=2) from exc
        if options["output"]:
            Path(options["output"]).write_text(text, encoding="utf-8")
            self.stderr.write(f"Wrote {options['output']}.")
        else:
            self.stdout.write(text, ending="")
