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


# Object permissions on a Project, named for what they allow (flags.Project Meta.permissions).
PROJECT_PERMISSIONS = (
    ("view_project", "Read the project's flags, targeting and rollouts"),
    ("edit_catalog", "Create and edit flags, variations, segments and targeting in non-governed environments"),
    ("propose_change", "Propose changes in any environment"),
    ("approve_change", "Approve or reject change requests"),
    ("flip_killswitch", "Flip kill switches and incident mode (move traffic to fallbacks)"),
    ("view_audit", "Read the whole audit trail"),
    ("export_audit", "Export the audit trail"),
    # Held on any one project, it opens the rows that belong to no project: sign-ins, failed
    # and throttled sign-ins, sign-outs, account and group changes in the admin, exports.
    ("view_account_audit", "Read account-level audit events (sign-ins, accounts, exports)"),
    ("manage_members", "Add members, grant and revoke roles"),
    ("manage_environments", "Create and change environments"),
    ("manage_sdk_keys", "Create and revoke SDK keys"),
    ("manage_approval_policy", "Change approval policies"),
)

# A role is a named set of those permissions, granted per project. A person may hold several.
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.VIEWER: frozenset({"view_project"}),
    Role.EDITOR: frozenset({"view_project", "edit_catalog", "propose_change"}),
    Role.APPROVER: frozenset({"view_project", "approve_change"}),
    Role.OPERATOR: frozenset({"view_project", "flip_killswitch"}),
    Role.AUDITOR: frozenset({"view_project", "view_audit", "export_audit", "view_account_audit"}),
    # Admins read and export their projects' trail; account-level events stay the auditors'.
    Role.ADMIN: frozenset({"view_project", "view_audit", "export_audit", "manage_members", "manage_environments",
                           "manage_sdk_keys", "manage_approval_policy"}),
}

# A flag's owner may edit that flag even without the editor role (flags.Flag Meta.permissions).
FLAG_OWNER_PERMISSION = "edit_flag"
