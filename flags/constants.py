from __future__ import annotations

from django.db import models

# Keys are lowercase slugs: letters, digits, "_" and "-", starting with a letter or digit.
KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,99}$"
KEY_HELP = "Lowercase letters, digits, “_” and “-”; starts with a letter or digit. Cannot be changed later."
KEY_ERROR = "Not a valid key: no spaces or capitals; use lowercase letters, digits, “_” and “-”, starting with a letter or digit."


class BehaviorSurface(models.TextChoices):
    PROMPT_PROFILE = "prompt_profile", "Prompt profile"
    MODEL_ROUTE = "model_route", "Model route"
    SAMPLING_PARAMETERS = "sampling_parameters", "Sampling parameters"
    RETRIEVAL_PROFILE = "retrieval_profile", "Retrieval profile"
    AGENT_TOOLS = "agent_tools", "Agent tools"
    GUARDRAIL_MODE = "guardrail_mode", "Guardrail mode"
    FALLBACK_MODE = "fallback_mode", "Fallback mode"
    AI_PROFILE = "ai_profile", "Whole AI profile"
    ROLLOUT = "rollout", "Rollout"
    OTHER = "other", "Other"


class ValueType(models.TextChoices):
    BOOLEAN = "boolean", "Boolean"
    STRING = "string", "String"
    NUMBER = "number", "Number"
    JSON = "json", "JSON"


class Lifetime(models.TextChoices):
    RELEASE = "release", "Temporary: release"
    EXPERIMENT = "experiment", "Temporary: experiment"
    KILL_SWITCH = "kill_switch", "Permanent: kill switch"
    PERMISSION_GATE = "permission_gate", "Permanent: permission gate"
    OPERATIONAL = "operational", "Permanent: operational control"


TEMPORARY_LIFETIMES = frozenset({Lifetime.RELEASE, Lifetime.EXPERIMENT})


class LifecycleStage(models.TextChoices):
    DRAFT = "draft", "Draft"
    ACTIVE = "active", "Active"
    RELEASED = "released", "Released"
    CLEANUP_DUE = "cleanup_due", "Cleanup due"
    ARCHIVED = "archived", "Archived"


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    EDITOR = "editor", "Flag owner / editor"
    APPROVER = "approver", "Approver (product manager)"
    OPERATOR = "operator", "Operator"
    AUDITOR = "auditor", "Auditor"
    ADMIN = "admin", "Project admin"


# Roles whose holders may change the catalog in non-governed environments.
EDITING_ROLES = frozenset({Role.EDITOR, Role.ADMIN})
