"""The flag catalog: projects, environments, flags (the contract), variations, segments,
per-environment targeting and SDK keys.

Models hold data and constraints only; every write goes through flags.services.
"""

from __future__ import annotations

import datetime
import secrets
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from audit.validators import TextLimitValidator
from flags.constants import (
    FLAG_OWNER_PERMISSION,
    KEY_ERROR,
    KEY_HELP,
    KEY_PATTERN,
    PROJECT_PERMISSIONS,
    TEMPORARY_LIFETIMES,
    BehaviorSurface,
    LifecycleStage,
    Lifetime,
    Role,
    ValueType,
)

REVIEW_DUE_SOON_DAYS = 7

key_validator = RegexValidator(KEY_PATTERN, KEY_ERROR)


def _key_field(**kwargs: object) -> models.CharField:
    return models.CharField(max_length=100, validators=[key_validator], help_text=KEY_HELP, **kwargs)


def _key_check(name: str) -> models.CheckConstraint:
    return models.CheckConstraint(condition=Q(key__regex=KEY_PATTERN), name=name)


def validate_time_zone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"“{value}” is not a time zone name such as Europe/Paris or UTC.") from exc


class Project(models.Model):
    key = _key_field(unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, validators=[TextLimitValidator("description")])
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone],
                                 help_text="Review dates and reminder days are dates in this time zone.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [_key_check("project_key_is_slug")]
        default_permissions = ()
        permissions = PROJECT_PERMISSIONS

    def __str__(self) -> str:
        return self.name

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    def today(self, now: datetime.datetime | None = None) -> datetime.date:
        """Today in the project's time zone."""
        return (now or timezone.now()).astimezone(self.tz).date()


class Membership(models.Model):
    """A role a person holds in a project. A person may hold several roles."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user", "role"], name="membership_unique_role"),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="membership_role_known"),
        ]

    def __str__(self) -> str:
        return f"{self.user} as {self.get_role_display()} in {self.project}"


class Environment(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="environments")
    key = _key_field()
    name = models.CharField(max_length=200)
    is_governed = models.BooleanField(
        default=False,
        help_text="Governed environments (production) take changes through approvals only.",
    )
    sort_order = models.PositiveSmallIntegerField(default=0)
    # Bumped by every change that can alter what this environment serves; evaluation
    # processes compare it with their snapshot's version.
    version = models.PositiveBigIntegerField(default=1)
    # When the version last moved: OFREP event streams send it as `lastModified`.
    changed_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["project", "sort_order", "key"]
        constraints = [
            models.UniqueConstraint(fields=["project", "key"], name="environment_key_unique_in_project"),
            _key_check("environment_key_is_slug"),
        ]

    def __str__(self) -> str:
        return self.name


class Tag(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tags")
    name = models.CharField(max_length=50)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="tag_unique_in_project")]

    def __str__(self) -> str:
        return self.name


def new_salt() -> str:
    return secrets.token_hex(8)


class Flag(models.Model):
    """The contract for one reversible release decision."""

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="flags")
    key = _key_field()
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, validators=[TextLimitValidator("description")])
    behavior_surface = models.CharField(max_length=32, choices=BehaviorSurface.choices)
    value_type = models.CharField(max_length=16, choices=ValueType.choices)
    json_schema = models.JSONField(null=True, blank=True)
    fallback_variation = models.ForeignKey(
        "Variation",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The safe default, served when the flag is off, rolled back or on error.",
    )
    owner_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="owned_flags"
    )
    owner_team = models.CharField(max_length=100, blank=True)
    lifetime = models.CharField(max_length=32, choices=Lifetime.choices)
    review_date = models.DateField(null=True, blank=True)
    cleanup_rule = models.TextField(blank=True, validators=[TextLimitValidator("cleanup_rule")])
    primary_metric = models.CharField(max_length=100, blank=True)
    guardrail_metrics = models.JSONField(default=list, blank=True)
    rollback_action = models.TextField(blank=True, validators=[TextLimitValidator("rollback_action")])
    first_audience = models.CharField(max_length=200, blank=True)
    tags = models.ManyToManyField(Tag, blank=True, related_name="flags")
    stage = models.CharField(max_length=16, choices=LifecycleStage.choices, default=LifecycleStage.DRAFT)
    # Archived flags keep being served until `served_until` (a grace period), then answer
    # FLAG_NOT_FOUND; `retired_at` records when the lifecycle job rebuilt snapshots without it.
    archived_at = models.DateTimeField(null=True, blank=True)
    served_until = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)
    version = models.PositiveIntegerField(default=1)
    # Mixed into percentage bucketing so two flags never split the same units the same way.
    # Never changes: changing it would reshuffle every unit's bucket.
    salt = models.CharField(max_length=32, default=new_salt, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["key"]
        permissions = [(FLAG_OWNER_PERMISSION, "Edit this flag, its variations and its non-governed targeting")]
        constraints = [
            models.UniqueConstraint(fields=["project", "key"], name="flag_key_unique_in_project"),
            _key_check("flag_key_is_slug"),
            models.CheckConstraint(condition=Q(value_type__in=ValueType.values), name="flag_value_type_known"),
            models.CheckConstraint(condition=Q(lifetime__in=Lifetime.values), name="flag_lifetime_known"),
            models.CheckConstraint(
                condition=Q(behavior_surface__in=BehaviorSurface.values), name="flag_surface_known"
            ),
            models.CheckConstraint(condition=Q(stage__in=LifecycleStage.values), name="flag_stage_known"),
            models.CheckConstraint(
                condition=Q(json_schema__isnull=True) | Q(value_type=ValueType.JSON),
                name="flag_schema_only_for_json",
            ),
        ]

    def __str__(self) -> str:
        return self.key

    @property
    def is_temporary(self) -> bool:
        return self.lifetime in TEMPORARY_LIFETIMES

    @property
    def review_state(self) -> str:
        """"overdue", "due_soon" (within a week) or "" — for badges beside the review date."""
        if not self.review_date:
            return ""
        days_left = (self.review_date - timezone.localdate()).days
        if days_left < 0:
            return "overdue"
        return "due_soon" if days_left <= REVIEW_DUE_SOON_DAYS else ""

    @property
    def owner_label(self) -> str:
        parts = []
        if self.owner_user_id:
            parts.append(self.owner_user.get_full_name() or self.owner_user.get_username())
        if self.owner_team:
            parts.append(self.owner_team)
        return " · ".join(parts)


class Variation(models.Model):
    flag = models.ForeignKey(Flag, on_delete=models.CASCADE, related_name="variations")
    key = _key_field()
    name = models.CharField(max_length=200, blank=True)
    value = models.JSONField(help_text="Typed by the flag's value type.")
    description = models.TextField(blank=True, validators=[TextLimitValidator("description")])
    risk_rank = models.PositiveSmallIntegerField(default=0, help_text="0 is the safest.")
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["flag", "sort_order", "id"]
        constraints = [
            models.UniqueConstraint(fields=["flag", "key"], name="variation_key_unique_in_flag"),
            _key_check("variation_key_is_slug"),
        ]

    def __str__(self) -> str:
        return f"{self.flag.key}:{self.key}" if self._state.fields_cache.get("flag") else self.key


class Segment(models.Model):
    """A reusable audience: included keys, excluded keys and attribute rules."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="segments")
    key = _key_field()
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, validators=[TextLimitValidator("description")])
    included_keys = models.JSONField(default=list, blank=True)
    excluded_keys = models.JSONField(default=list, blank=True)
    rules = models.JSONField(default=list, blank=True)
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]
        constraints = [
            models.UniqueConstraint(fields=["project", "key"], name="segment_key_unique_in_project"),
            _key_check("segment_key_is_slug"),
        ]

    def __str__(self) -> str:
        return self.key


class Targeting(models.Model):
    """How one flag serves in one environment. Rules and targets are validated structured
    data (see flags.evaluation.targeting_schema); `version` rises on every change."""

    flag = models.ForeignKey(Flag, on_delete=models.CASCADE, related_name="targetings")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="targetings")
    enabled = models.BooleanField(default=False)
    targets = models.JSONField(default=list, blank=True)
    rules = models.JSONField(default=list, blank=True)
    default_serve = models.JSONField(help_text="A variation or a weighted split.")
    assignment_unit = models.CharField(
        max_length=100,
        default="targetingKey",
        help_text="The context attribute bucketed by percentage splits (account, user, conversation…).",
    )
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["environment__sort_order"]
        constraints = [
            models.UniqueConstraint(fields=["flag", "environment"], name="targeting_unique_per_environment"),
            models.CheckConstraint(condition=Q(version__gte=1), name="targeting_version_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.flag_id}@{self.environment_id}"


class SdkKey(models.Model):
    """A server SDK key for one environment. Only a SHA-256 hash is stored: keys carry 256
    bits of randomness, so a salted slow hash would add nothing but per-request cost."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="sdk_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The first characters, shown to tell keys apart.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class AccessToken(models.Model):
    """A bearer token for the management API (/api/v1/). Only a SHA-256 hash is stored.

    A personal token acts as its user, with the roles the user holds at each request. A service
    token is bound to one project and acts as a service account of its own (`user`, which cannot
    sign in) holding one role per scope; `created_by` is the person answering for it, so change
    control counts its approvals and its requests as theirs (four eyes hold across tokens)."""

    class Kind(models.TextChoices):
        PERSONAL = "personal", "Personal"
        SERVICE = "service", "Service"

    class Scope(models.TextChoices):
        READ = "read", "Read"
        WRITE = "write", "Write (edit flags, propose changes, act on plans)"
        APPROVE = "approve", "Approve or reject change requests"
        OPERATE = "operate", "Operate (kill switches, incident mode)"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    name = models.CharField(max_length=100)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens")
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.CASCADE, related_name="access_tokens")
    scopes = models.JSONField(default=list)
    prefix = models.CharField(max_length=16, help_text="The first characters, shown to tell tokens apart.")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(kind="personal") | Q(project__isnull=False),
                                   name="service_token_has_project"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def usable(self, now: datetime.datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


# Direct-foreign-key object permissions (django-guardian): deleting a project or flag deletes
# its permission rows with it, and lookups join on a real key instead of a generic one.
class ProjectUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Project, on_delete=models.CASCADE)


class ProjectGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Project, on_delete=models.CASCADE)


class FlagUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Flag, on_delete=models.CASCADE)


class FlagGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Flag, on_delete=models.CASCADE)


class EvaluationRecord(models.Model):
    """When a flag was last evaluated in an environment. Written in batches by the evaluation
    service (flags.snapshot_store), never once per evaluation."""

    flag = models.ForeignKey(Flag, on_delete=models.CASCADE, related_name="evaluation_records")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    last_evaluated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["flag", "environment"], name="one_evaluation_record")]

    def __str__(self) -> str:
        return f"{self.flag_id}@{self.environment_id}: {self.last_evaluated_at}"
