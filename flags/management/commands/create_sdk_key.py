from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.context import audit_context
from audit.services import SystemActor
from flags.models import Environment
from flags.services import sdk_key_create


class Command(BaseCommand):
    help = "Create a server SDK key for one environment and print it (it is stored hashed, shown once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", required=True, help="project key, e.g. support-assistant")
        parser.add_argument("--environment", required=True, help="environment key, e.g. production")
        parser.add_argument("--name", default="server key", help="a label to tell keys apart")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            environment = Environment.objects.select_related("project").get(
                project__key=options["project"], key=options["environment"]
            )
        except Environment.DoesNotExist as exc:
            raise CommandError(
                f"No environment “{options['environment']}” in project “{options['project']}”."
            ) from exc
        with audit_context(user_agent="manage.py create_sdk_key"):
            sdk_key, raw_key = sdk_key_create(
                environment=environment, name=options["name"], actor=SystemActor("create_sdk_key command")
            )
        self.stderr.write(f"Created “{sdk_key.name}” for {environment.project.key}/{environment.key}. "
                          "Store it now: it is not shown again.")
        self.stdout.write(raw_key)
