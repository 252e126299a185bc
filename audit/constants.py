"""The one registry of audit actions and actor kinds."""

from __future__ import annotations

from django.db import models


class ActorKind(models.TextChoices):
    USER = "user", "User"
    SDK_KEY = "sdk_key", "API or SDK key"
    SYSTEM = "system", "System job"


class AuditAction(models.TextChoices):
    PROJECT_CREATED = "project.created", "Project created"
    PROJECT_UPDATED = "project.updated", "Project settings changed"
    ENVIRONMENT_CREATED = "environment.created", "Environment created"
    ENVIRONMENT_GOVERNED = "environment.governed", "Environment put under change control"
    LOGIN_SUCCEEDED = "auth.login", "Signed in"
    LOGIN_FAILED = "auth.login_failed", "Sign-in failed"
    LOGIN_THROTTLED = "auth.login_throttled", "Sign-in refused (throttled)"
    LOGGED_OUT = "auth.logout", "Signed out"
    ROLE_GRANTED = "role.granted", "Role granted"
    ROLE_REVOKED = "role.revoked", "Role revoked"
    APPROVAL_POLICY_UPDATED = "approval_policy.updated", "Approval policy changed"
    AUDIT_EXPORTED = "audit.exported", "Audit trail exported"
    FLAG_CREATED = "flag.created", "Flag created"
    FLAG_UPDATED = "flag.updated", "Flag updated"
    FLAG_STAGE_CHANGED = "flag.stage_changed", "Flag lifecycle stage changed"
    CONTRACTS_IMPORTED = "contracts.imported", "Flag contracts imported"
    FLAG_ARCHIVED = "flag.archived", "Flag archived"
    FLAG_RESTORED = "flag.restored", "Flag restored from the archive"
    FLAG_RETIRED = "flag.retired", "Archived flag no longer served"
    VARIATION_CREATED = "variation.created", "Variation created"
    VARIATION_UPDATED = "variation.updated", "Variation updated"
    VARIATION_DELETED = "variation.deleted", "Variation deleted"
    TARGETING_UPDATED = "targeting.updated", "Targeting updated"
    SEGMENT_CREATED = "segment.created", "Segment created"
    SEGMENT_UPDATED = "segment.updated", "Segment updated"
    SEGMENT_DELETED = "segment.deleted", "Segment deleted"
    CHANGE_REQUEST_CREATED = "change_request.created", "Change requested"
    CHANGE_REQUEST_EDITED = "change_request.edited", "Change request edited"
    CHANGE_REQUEST_APPROVED = "change_request.approved", "Change request approved"
    CHANGE_REQUEST_REJECTED = "change_request.rejected", "Change request rejected"
    CHANGE_REQUEST_SCHEDULED = "change_request.scheduled", "Change request scheduled"
    CHANGE_REQUEST_UNSCHEDULED = "change_request.unscheduled", "Change request no longer scheduled (approvals lapsed)"
    CHANGE_REQUEST_APPLIED = "change_request.applied", "Change request applied"
    CHANGE_REQUEST_CONFLICTED = "change_request.conflicted", "Change request conflicted"
    CHANGE_REQUEST_CANCELLED = "change_request.cancelled", "Change request cancelled"
    CHANGE_REQUEST_EXPIRED = "change_request.expired", "Change request expired"
    CHANGE_REQUEST_COMMENTED = "change_request.commented", "Change request commented"
    KILLSWITCH_FLIPPED = "killswitch.flipped", "Kill switch flipped"
    INCIDENT_STARTED = "incident.started", "Incident mode started"
    INCIDENT_LIFTED = "incident.lifted", "Incident mode lifted"
    FOLLOW_UP_ACKNOWLEDGED = "follow_up.acknowledged", "Follow-up acknowledged"
    SDK_KEY_CREATED = "sdk_key.created", "SDK key created"
    SDK_KEY_REVOKED = "sdk_key.revoked", "SDK key revoked"
    ACCESS_TOKEN_CREATED = "access_token.created", "API token created"
    ACCESS_TOKEN_REVOKED = "access_token.revoked", "API token revoked"
    WEBHOOK_CREATED = "webhook.created", "Webhook created"
    WEBHOOK_UPDATED = "webhook.updated", "Webhook changed"
    WEBHOOK_DELETED = "webhook.deleted", "Webhook deleted"
    METRIC_CREATED = "metric.created", "Metric created"
    METRIC_UPDATED = "metric.updated", "Metric changed"
    PLAN_CREATED = "plan.created", "Rollout plan created"
    PLAN_STARTED = "plan.started", "Rollout plan started"
    PLAN_ADVANCE_REQUESTED = "plan.advance_requested", "Rollout stage waiting for approval"
    PLAN_ADVANCED = "plan.advanced", "Rollout plan entered a stage"
    PLAN_PAUSED = "plan.paused", "Rollout plan paused"
    PLAN_RESUMED = "plan.resumed", "Rollout plan resumed"
    PLAN_ROLLED_BACK = "plan.rolled_back", "Rollout plan rolled back"
    PLAN_STEPPED_BACK = "plan.stepped_back", "Rollout plan stepped back to its previous stage and paused"
    PLAN_PROMOTED = "plan.promoted", "Rollout plan promoted"
    PLAN_INVESTIGATED = "plan.investigated", "Rollout plan marked for investigation"
    PLAN_BREACHED = "plan.breached", "Rollout guardrail breached"
    PLAN_REQUEST_CLOSED = "plan.request_closed", "Rollout stage request closed without applying"
    PLAN_ATTENTION_CLEARED = "plan.attention_cleared", "Rollout plan investigation closed"
    PLAN_DISCARDED = "plan.discarded", "Draft rollout plan discarded"
    USER_CREATED = "user.created", "User account created"
    USER_UPDATED = "user.updated", "User account changed"
    USER_PASSWORD_CHANGED = "user.password_changed", "User password changed"
    USER_DELETED = "user.deleted", "User account deleted"
    GROUP_CREATED = "group.created", "Permission group created"
    GROUP_UPDATED = "group.updated", "Permission group changed"
    GROUP_DELETED = "group.deleted", "Permission group deleted"
    SESSIONS_REVOKED = "user.sessions_revoked", "User signed out everywhere"
    SSO_RULE_CREATED = "sso_rule.created", "Sign-in role rule created"
    SSO_RULE_UPDATED = "sso_rule.updated", "Sign-in role rule changed"
    SSO_RULE_DELETED = "sso_rule.deleted", "Sign-in role rule deleted"


# One limit per free-text field that reaches the audit trail (docs/architecture.md, "Free-text
# limits"). The services refuse longer text with a ValidationError on the field, before anything
# is written (audit.validators); nothing is ever cut. Names and other short fields keep their
# column's max_length, which full_clean() enforces.
TEXT_LIMITS: dict[str, int] = {
    # Why a change is made: change requests (targeting, flag-wide, segment, contract imports),
    # kill switch, incident mode and its lift, archive and restore, the reason of a direct edit,
    # role and SDK key revocations, webhook changes.
    "reason": 2_000,
    # A rollout plan's decisions. The plan writes the reason into the change request it opens,
    # after up to 200 characters naming the plan and the stage, and that reason keeps 2,000.
    "plan_reason": 1_800,
    # Approval and rejection comments, and the discussion on a change request.
    "comment": 5_000,
    # What a second person found when acknowledging a follow-up.
    "note": 2_000,
    # Descriptions of projects, flags, variations, segments and metrics; a flag's cleanup rule
    # and rollback action.
    "description": 5_000,
    "cleanup_rule": 2_000,
    "rollback_action": 2_000,
    # Built by code from the change. Longer ones are shortened with a visible "…", never
    # refused: the change itself is in before/after, in full.
    "summary": 1_000,
    # What audit.record() accepts as a row's reason: the longest text people give (a 5,000
    # character comment) plus room for the context code puts before a reason ("CR-12: ",
    # "Kill switch: ", "Rollout plan 3, stage 2 (beta): "). Longer is a caller's bug: it raises.
    "audit_reason": 6_000,
}
