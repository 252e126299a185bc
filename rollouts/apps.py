from __future__ import annotations

from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    """Change control and evidence: change requests, approvals, rollout plans, telemetry.
    It writes flags only through flags.services. Its models arrive with the approvals and
    rollout issues."""

    name = "rollouts"
    verbose_name = "Rollouts and change control"
