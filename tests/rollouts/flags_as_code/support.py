"""Shared helpers of the flags-as-code tests: the demo's export of a flag (its entry, ready
to edit), a document of entries, an import by a demo user, and everything an import could
write, to compare before and after."""

from __future__ import annotations

from typing import Any

import yaml

from audit.models import AuditEvent
from flags.models import Environment, Flag, Targeting, Variation
from rollouts.flags_as_code import CONTRACT_KEY, export_contracts, import_contracts
from rollouts.models import ChangeRequest
from tests.rollouts.support import user

PROFILE = "support_assistant_profile"
IMPORT_URL = "/p/support-assistant/contracts/import/"


def exported(project: Any, *keys: str) -> Any:
    return yaml.safe_load(export_contracts(project=project, flag_keys=list(keys)))


def body(project: Any, key: str) -> dict[str, Any]:
    """One flag's contract as exported, ready to edit."""
    return exported(project, key)[CONTRACT_KEY]


def as_yaml(*bodies: dict[str, Any]) -> str:
    return yaml.safe_dump([{CONTRACT_KEY: b} for b in bodies], sort_keys=False)


def run(project: Any, text: str, actor: str = "owner", reason: str = "Flags as code", **kwargs: Any) -> Any:
    return import_contracts(project=project, text=text, actor=user(actor), reason=reason, **kwargs)


def catalog_state() -> dict[str, Any]:
    """Everything an import could write: rows and versions."""
    return {
        "audit": AuditEvent.objects.count(), "requests": ChangeRequest.objects.count(),
        "flags": sorted(Flag.objects.values_list("key", "version", "name")),
        "variations": sorted(Variation.objects.values_list("flag__key", "key", "name", "risk_rank")),
        "targeting": sorted(Targeting.objects.values_list("flag__key", "environment__key", "version")),
        "environments": sorted(Environment.objects.values_list("key", "version")),
    }


def problem_texts(result: Any) -> list[str]:
    return [str(p) for p in result.problems]


NEW_FLAG = {
    "flag_key": "support_answer_tone",
    "name": "Support answer tone",
    "description": "Which tone profile answers support questions.",
    "behavior_surface": "prompt_profile",
    "value_type": "string",
    "owner": "support-ai-platform",
    "owner_user": "owner",
    "fallback": "neutral",
    "first_audience": "internal_users",
    "primary_metric": "resolved_without_escalation",
    "guardrails": ["p95_latency", "support_complaint_rate"],
    "rollback_action": "Serve neutral to everyone.",
    "cleanup_rule": "Remove the losing tone after the decision.",
    "lifetime": "experiment",
    "review_date": "2031-01-31",
    "tags": ["support", "Tone"],
    "variations": [
        {"key": "neutral", "name": "Neutral", "value": "neutral", "risk_rank": 0},
        {"key": "warm", "name": "Warm", "value": "warm", "risk_rank": 1, "description": "Candidate."},
    ],
    "targeting": {
        "development": {"enabled": True, "assignment_unit": "accountId", "targets": [], "rules": [],
                        "default_serve": {"variation": "warm"}},
        "production": {"enabled": True, "assignment_unit": "accountId", "targets": [],
                       "rules": [{"id": "internal", "clauses": [{"op": "in_segment", "values": ["internal_users"]}],
                                  "serve": {"variation": "warm"}}],
                       "default_serve": {"variation": "neutral"}},
    },
}
