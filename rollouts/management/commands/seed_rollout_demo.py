"""`manage.py seed_rollout_demo`: the demo's rollout plan, running at its first stage."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from audit.context import audit_context
from rollouts.demo import DemoNotLoaded, seed_rollout_demo
from rollouts.models import ReleaseDecision
from rollouts.plans.design import plan_stages


class Command(BaseCommand):
    help = ("Create and start the demo's rollout plan (support_assistant_profile → citation_first_v4 in "
            "production, demo-sized bake times). Does nothing if the flag already has a plan there.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            with audit_context(user_agent="manage.py seed_rollout_demo"):
                plan, created = seed_rollout_demo()
        except DemoNotLoaded as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            # A demo database people have changed (the flag's targeting, its variations) may
            # refuse the plan; `make run` still starts, and nothing was written.
            self.stderr.write(f"The demo rollout plan was not created: {'; '.join(exc.messages)}")
            return
        stages = plan_stages(plan)
        where = (f"stage {plan.stage_index + 1} of {len(stages)} ({stages[plan.stage_index].name})"
                 if 0 <= plan.stage_index < len(stages) else "not started")
        verb = "created and started" if created else "already there"
        self.stdout.write(f"Demo rollout plan {plan.pk} {verb}: {plan.flag.key} in {plan.environment.name}, "
                          f"{plan.baseline} → {plan.candidate}, {plan.get_status_display().lower()}, {where}.")
        approved = ReleaseDecision.objects.filter(plan=plan, action=ReleaseDecision.Action.START,
                                                  change_request__isnull=False).values_list("change_request", flat=True)
        if created and approved:
            self.stdout.write(f"Its first stage raised risk in {plan.environment.name}: CR-{approved[0]} was approved "
                              "by pm and lead and applied by owner.")
