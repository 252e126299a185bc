"""The append-only history of every change.

`audit` imports no other app of ours: project, environment and flag are kept as plain ids
plus label snapshots, so rows read well after the objects are gone and the app stays at the
bottom of the dependency graph.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings
from django.db import models

from audit.chain import canonical_json
from audit.constants import ActorKind, AuditAction


class CanonicalJSONField(models.TextField):
    """JSON kept as its canonical text (audit.chain.canonical_json), so the bytes that were
    hashed are the bytes stored: a JSONB column would renormalise numbers and keys."""

    def from_db_value(self, value: str | None, expression: object, connection: object) -> Any:
        return None if value is None else json.loads(value)

    def to_python(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    def get_prep_value(self, value: Any) -> str | None:
        return None if value is None else canonical_json(value)


class AppendOnlyError(Exception):
    """Raised on any attempt to change or remove an audit row."""


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs: object) -> int:
        raise AppendOnlyError("Audit events are append-only; they cannot be updated.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("Audit events are append-only; they cannot be deleted.")


class AuditEvent(models.Model):
    # The auto-incrementing primary key doubles as the sequence number.
    created_at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        # DO_NOTHING without a database constraint: deleting a user changes no audit row
        # (which the chain and the append-only trigger would refuse); the id and the label
        # snapshot stay. Read actor_label, not actor, for display.
        on_delete=models.DO_NOTHING,
        related_name="+",
        db_constraint=False,
    )
    actor_label = models.CharField(max_length=200)
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices)
    # Validated against the AuditAction registry by record(); not a `choices` field, so that
    # adding an action never needs a migration of this large table.
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    target_label = models.CharField(max_length=300)
    project_id = models.BigIntegerField(null=True, blank=True)
    project_label = models.CharField(max_length=200, blank=True)
    environment_id = models.BigIntegerField(null=True, blank=True)
    environment_label = models.CharField(max_length=200, blank=True)
    flag_id = models.BigIntegerField(null=True, blank=True)
    before = CanonicalJSONField(null=True, blank=True)
    after = CanonicalJSONField(null=True, blank=True)
    summary = models.TextField(blank=True)
    reason = models.TextField(blank=True)
    correlation_id = models.UUIDField(default=uuid.uuid4, db_index=True)
    request_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=400, blank=True)
    change_request_id = models.BigIntegerField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        # Keyset pages are "newest first, filtered": one (filter, id) index per filter.
        indexes = [
            models.Index(fields=["project_id", "-id"], name="audit_project_recent"),
            models.Index(fields=["environment_id", "-id"], name="audit_environment_recent"),
            models.Index(fields=["flag_id", "-id"], name="audit_flag_recent"),
            models.Index(fields=["actor", "-id"], name="audit_actor_recent"),
            models.Index(fields=["action", "-id"], name="audit_action_recent"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.target_label}"

    def save(self, *args: object, **kwargs: object) -> None:
        if not self._state.adding:
            raise AppendOnlyError("Audit events are append-only; they cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args: object, **kwargs: object) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("Audit events are append-only; they cannot be deleted.")

    @property
    def action_label(self) -> str:
        return AuditAction(self.action).label if self.action in AuditAction.values else self.action
