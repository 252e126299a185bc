"""`manage.py seed_metrics [--project support-assistant]`: the demo's metrics registry."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from flags.models import Project
from telemetry.demo import seed_demo_metrics


class Command(BaseCommand):
    help = "Create the demo's metrics (primary and guardrail metrics of the seed flags) in a project; idempotent."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", default="support-assistant", help="project key")

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(key=options["project"]).first()
        if project is None:
            raise CommandError(f"No project with key {options['project']!r} (run seed_demo first).")
        created = seed_demo_metrics(project)
        self.stdout.write(f"{len(created)} metrics created in {project.key}"
                          + (f": {', '.join(m.key for m in created)}" if created else " (all present)"))
