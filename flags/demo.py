"""The demo catalog: the support-assistant flags of the seed articles, their segments and
targeting, and one demo user per role. Loaded by `manage.py seed_demo`, idempotently."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from audit.services import SystemActor
from flags import services
from flags.constants import BehaviorSurface, Lifetime, Role, ValueType
from flags.models import Project, Targeting
from flags.served_state.guard import GovernanceError

SEED_ACTOR = SystemActor("seed-demo")
DEMO_PASSWORD = "featureops-demo"  # noqa: S105 - printed for the demo; never used outside seed_demo


@dataclass(frozen=True)
class DemoUser:
    username: str
    first_name: str
    last_name: str
    roles: tuple[Role, ...]
    description: str


DEMO_USERS = (
    DemoUser("pm", "Priya", "Manager", (Role.APPROVER, Role.VIEWER), "product manager (approver)"),
    DemoUser("lead", "Lee", "Lead", (Role.APPROVER, Role.EDITOR), "engineering lead (editor and second approver)"),
    DemoUser("operator", "Omar", "Oncall", (Role.OPERATOR, Role.VIEWER), "operator (on call)"),
    DemoUser("owner", "Fatima", "Owner", (Role.EDITOR,), "flag owner (engineer)"),
    DemoUser("auditor", "Aiden", "Auditor", (Role.AUDITOR,), "auditor"),
    DemoUser("admin", "Ada", "Admin", (Role.ADMIN, Role.EDITOR), "project admin"),
)

SUPPORT_AI_PROFILE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "SupportAiProfile",
    "type": "object",
    "additionalProperties": False,
    "required": ["profile", "prompt", "modelRoute", "temperature", "maxOutputTokens", "retrievalProfile",
                 "toolMode", "fallback"],
    "properties": {
        "profile": {"enum": ["baseline_v3", "citation_first_v4", "fallback_human_review"]},
        "prompt": {"type": "string", "minLength": 1},
        "modelRoute": {"type": "string", "minLength": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "maxOutputTokens": {"type": "integer", "minimum": 1, "maximum": 32000},
        "retrievalProfile": {"type": "string", "minLength": 1},
        "toolMode": {"enum": ["none", "read_only", "approval_required"]},
        "fallback": {"enum": ["baseline", "human_escalation"]},
    },
}


def _profile(profile: str, prompt: str, max_tokens: int, retrieval: str, tool_mode: str, temperature: float = 0.2) -> dict:
    return {"profile": profile, "prompt": prompt, "modelRoute": "standard_support_model", "temperature": temperature,
            "maxOutputTokens": max_tokens, "retrievalProfile": retrieval, "toolMode": tool_mode,
            "fallback": "human_escalation"}


INTERNAL = {"op": "in_segment", "values": ["internal_users"]}
BETA = {"op": "in_segment", "values": ["beta_accounts"]}


def _targeting(default: str, *, enabled: bool = True, rules: list | None = None) -> dict:
    """A demo flag's targeting in one environment: by account, `default` for whoever no rule serves."""
    return {"enabled": enabled, "assignment_unit": "accountId", "rules": rules or [],
            "default_serve": {"variation": default}}


def _flag_specs(today: datetime.date) -> list[dict]:
    return [
        {
            "key": "support_assistant_profile",
            "name": "Support assistant profile",
            "description": "Should the support assistant use the citation-first profile (prompt, retrieval, token "
                           "budget and fallback, reviewed together as one candidate experience)?",
            "behavior_surface": BehaviorSurface.AI_PROFILE,
            "value_type": ValueType.JSON,
            "json_schema": SUPPORT_AI_PROFILE_SCHEMA,
            "lifetime": Lifetime.EXPERIMENT,
            "variations": [
                {"key": "baseline_v3", "name": "Baseline v3", "risk_rank": 0,
                 "value": _profile("baseline_v3", "support_answer_v3", 700, "verified_docs_baseline", "read_only"),
                 "description": "The stable profile; the fallback."},
                {"key": "citation_first_v4", "name": "Citation first v4", "risk_rank": 1,
                 "value": _profile("citation_first_v4", "support_answer_citation_first_v4", 900,
                                   "verified_docs_rerank_v2", "read_only"),
                 "description": "Candidate: answers lead with citations from reranked verified docs."},
                {"key": "fallback_human_review", "name": "Fallback: human review", "risk_rank": 0,
                 "value": _profile("fallback_human_review", "support_answer_v3", 500, "verified_docs_baseline",
                                   "none", temperature=0.0),
                 "description": "Degraded safe path: drafts go to a human before reaching the customer."},
            ],
            "fallback": "baseline_v3",
            "owner_team": "support-ai-platform",
            "review_date": today - datetime.timedelta(days=3),  # overdue
            "cleanup_rule": "Promote the winner or remove the candidate profile after the decision.",
            "primary_metric": "resolved_without_escalation",
            "guardrail_metrics": ["latency_p95", "correction_rate", "citation_failure_rate", "estimated_cost_per_case"],
            "rollback_action": "Return the targeted audience to baseline_v3 (route new sessions to the baseline profile).",
            "first_audience": "Internal support team, then beta accounts",
            "tags": ["support", "experiment", "retrieval"],
            "targeting": {
                "development": _targeting("citation_first_v4"),
                "staging": _targeting("baseline_v3", rules=[
                    {"id": "internal", "description": "Internal support team", "clauses": [INTERNAL],
                     "serve": {"variation": "citation_first_v4"}},
                    {"id": "beta-50", "description": "50 % experiment on beta accounts", "clauses": [BETA],
                     "serve": {"split": [{"variation": "baseline_v3", "weight": 50000},
                                         {"variation": "citation_first_v4", "weight": 50000}]}},
                ]),
                "production": _targeting("baseline_v3", rules=[
                    {"id": "internal", "description": "Internal support team", "clauses": [INTERNAL],
                     "serve": {"variation": "citation_first_v4"}},
                    {"id": "beta-5", "description": "5 % of eligible beta traffic", "clauses": [BETA],
                     "serve": {"split": [{"variation": "baseline_v3", "weight": 95000},
                                         {"variation": "citation_first_v4", "weight": 5000}]}},
                ]),
            },
        },
        {
            "key": "support_agent_tool_mode",
            "name": "Support agent tool mode",
            "description": "How much tool authority the support agent has. Kept apart from the profile flag so "
                           "operators can reduce tool authority without disabling the assistant.",
            "behavior_surface": BehaviorSurface.AGENT_TOOLS,
            "value_type": ValueType.STRING,
            "lifetime": Lifetime.PERMISSION_GATE,
            "variations": [
                {"key": "none", "name": "No tools", "value": "none", "risk_rank": 0},
                {"key": "read_only", "name": "Read-only tools", "value": "read_only", "risk_rank": 1},
                {"key": "approval_required", "name": "Approval-required writes", "value": "approval_required",
                 "risk_rank": 3},
                {"key": "write", "name": "Write tools", "value": "write", "risk_rank": 4},
            ],
            "fallback": "read_only",
            "owner_team": "support-ai-platform",
            "review_date": today + datetime.timedelta(days=5),  # due within a week
            "cleanup_rule": "Permanent permission gate: review quarterly; document the approved tool tier per plan.",
            "primary_metric": "approval_rate",
            "guardrail_metrics": ["denial_rate", "incident_signal"],
            "rollback_action": "Disable write tools or require approval (serve read_only).",
            "first_audience": "Internal support team",
            "tags": ["support", "agent", "permissions"],
            "targeting": {
                "development": _targeting("approval_required"),
                "staging": _targeting("read_only", rules=[
                    {"id": "internal", "clauses": [INTERNAL], "serve": {"variation": "approval_required"}}]),
                "production": _targeting("read_only", rules=[
                    {"id": "internal", "description": "Internal support team", "clauses": [INTERNAL],
                     "serve": {"variation": "approval_required"}}]),
            },
        },
        {
            "key": "support_ai_incident_fallback",
            "name": "Support AI incident fallback",
            "description": "Operational rollback and incident response: what the assistant falls back to.",
            "behavior_surface": BehaviorSurface.FALLBACK_MODE,
            "value_type": ValueType.STRING,
            "lifetime": Lifetime.OPERATIONAL,
            "variations": [
                {"key": "baseline_model", "name": "Baseline model", "value": "baseline_model", "risk_rank": 0},
                {"key": "cached_answer", "name": "Cached answer", "value": "cached_answer", "risk_rank": 1},
                {"key": "human_escalation", "name": "Human escalation", "value": "human_escalation", "risk_rank": 1},
                {"key": "off", "name": "Assistant off", "value": "off", "risk_rank": 2},
            ],
            "fallback": "baseline_model",
            "owner_team": "support-operations",
            "review_date": today + datetime.timedelta(days=90),
            "cleanup_rule": "Permanent operational control: keep; review the fallback paths each quarter.",
            "primary_metric": "recovery_rate",
            "guardrail_metrics": ["support_complaint_rate"],
            "rollback_action": "Keep the degraded safe path active until the incident closes.",
            "first_audience": "Everyone (operational)",
            "tags": ["support", "incident", "kill-switch"],
            "targeting": {
                "development": _targeting("baseline_model"),
                "staging": _targeting("baseline_model", enabled=False),
                "production": _targeting("baseline_model", enabled=False),
            },
        },
    ]


SEGMENTS = [
    {"key": "internal_users", "name": "Internal users", "description": "The internal support team.",
     "included_keys": ["acct-internal-001", "acct-internal-002"],
     "rules": [{"clauses": [{"attribute": "email", "op": "ends_with", "values": ["@support.example.com"]}]}]},
    {"key": "beta_accounts", "name": "Beta accounts", "description": "Accounts enrolled in the beta programme.",
     "included_keys": ["acct-beta-101", "acct-beta-102", "acct-beta-103"], "excluded_keys": ["acct-beta-999"],
     "rules": [{"clauses": [{"attribute": "plan", "op": "in", "values": ["beta"]}]}]},
]

ENVIRONMENTS = [("development", "Development", False), ("staging", "Staging", False), ("production", "Production", True)]


def seed_demo() -> tuple[Project, list[DemoUser]]:
    """Create what is missing; never duplicate or overwrite what exists."""
    today = timezone.localdate()
    with transaction.atomic():
        project = Project.objects.filter(key="support-assistant").first() or services.project_create(
            key="support-assistant", name="Support assistant",
            description="The AI support assistant: prompt profiles, tool authority and incident fallbacks.",
            actor=SEED_ACTOR,
        )
        for order, (key, name, _governed) in enumerate(ENVIRONMENTS):
            if not project.environments.filter(key=key).exists():
                # Created ungoverned, seeded, then governed below: the demo's starting state is
                # set before change control begins, not by skipping it.
                services.environment_create(project=project, key=key, name=name, sort_order=order,
                                            actor=SEED_ACTOR)
        user_model = get_user_model()
        users = {}
        for demo in DEMO_USERS:
            user = user_model.objects.filter(username=demo.username).first()
            if user is None:
                user = user_model.objects.create_user(
                    username=demo.username, password=DEMO_PASSWORD, first_name=demo.first_name,
                    last_name=demo.last_name, email=f"{demo.username}@featureops.example",
                )
                if demo.username == "admin":
                    # Site administrator too, so the Django admin is reachable in the demo.
                    user.is_staff = user.is_superuser = True
                    user.save(update_fields=["is_staff", "is_superuser"])
            users[demo.username] = user
            for role in demo.roles:
                services.membership_grant(project=project, user=user, role=role, actor=SEED_ACTOR)
        for spec in SEGMENTS:
            if not project.segments.filter(key=spec["key"]).exists():
                services.segment_create(project=project, actor=SEED_ACTOR, **spec)
        for spec in _flag_specs(today):
            if project.flags.filter(key=spec["key"]).exists():
                continue
            spec = dict(spec)
            targeting = spec.pop("targeting")
            fallback = spec.pop("fallback")
            flag = services.flag_create(project=project, fallback_variation_key=fallback, owner_user=users["owner"],
                                        actor=SEED_ACTOR, **spec)
            for environment_key, changes in targeting.items():
                try:
                    with transaction.atomic():
                        services.targeting_update(
                            targeting=Targeting.objects.get(flag=flag, environment__key=environment_key),
                            actor=SEED_ACTOR, reason="Demo data", **changes,
                        )
                except GovernanceError:
                    pass  # a flag added to an already governed demo stays off there until approved
        for key, _name, governed in ENVIRONMENTS:
            environment = project.environments.get(key=key)
            if governed and not environment.is_governed:
                services.environment_govern(environment=environment, actor=SEED_ACTOR,
                                            reason="Demo data seeded; production changes need approval from now on")
    services.flag_lifecycle_recompute(actor=SEED_ACTOR, project=project)
    return project, list(DEMO_USERS)
