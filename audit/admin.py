from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from audit.models import AuditEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    """Support staff may look; nobody may add, change or delete here: changes go through the
    console (or a management command), where they are audited. Every field shows read-only,
    but those in `exclude` (secrets), which do not show at all."""

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        hidden = set(self.exclude or ())
        opts = self.model._meta
        return [field.name for field in [*opts.fields, *opts.many_to_many] if field.name not in hidden]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "actor_label", "action", "target_label", "project_label")
    list_filter = ("action", "actor_kind")
    search_fields = ("target_label", "summary", "reason", "actor_label")
    date_hierarchy = "created_at"
