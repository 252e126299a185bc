from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit.context import audit_context
from flags.demo import DEMO_PASSWORD, seed_demo


class Command(BaseCommand):
    help = "Load the demo project (the seeds' support-assistant flags) and demo users. Idempotent."

    def handle(self, *args: Any, **options: Any) -> None:
        with audit_context(user_agent="manage.py seed_demo"):
            project, users = seed_demo()
        self.stdout.write(self.style.SUCCESS(
            f"Demo project “{project.name}” ({project.key}) is ready: "
            f"{project.flags.count()} flags, {project.segments.count()} segments."))
        self.stdout.write(f"Demo logins (password for all: {DEMO_PASSWORD}):")
        for user in users:
            self.stdout.write(f"  {user.username:<10} {user.description}")
