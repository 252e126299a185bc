"""The one registry of audit actions and actor kinds."""

from __future__ import annotations

from django.db import models


class ActorKind(models.TextChoices):
    USER = "user", "User"
    SDK_KEY = "sdk_key", "API or SDK key"
    SYSTEM = "system", "System job"


class AuditAction(models.TextChoices):
    PROJECT_CREATED = "project.created", "Project created"
    ENVIRONMENT_CREATED = "environment.created", "Environment created"
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
