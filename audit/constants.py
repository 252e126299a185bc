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
    SDK_KEY_CREATED = "sdk_key.created", "SDK key created"
    SDK_KEY_REVOKED = "sdk_key.revoked", "SDK key revoked"
