"""Django admin for support staff. Reads freely; writes of catalog rows go through the
services (and so into the audit trail), so the admin offers no add, change or delete for
them. Use the console, or a management command, to change the catalog. Accounts and
permission groups are edited here, audited (`flags/admin_accounts.py`)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from audit.admin import ReadOnlyAdmin
from flags import admin_accounts  # noqa: F401  (replaces the stock User and Group admins)
from flags.models import Environment, Flag, Membership, Project, SdkKey, Segment, Targeting, Variation


@admin.register(Project)
class ProjectAdmin(ReadOnlyAdmin):
    list_display = ("key", "name", "created_at")
    search_fields = ("key", "name")


@admin.register(Environment)
class EnvironmentAdmin(ReadOnlyAdmin):
    list_display = ("key", "name", "project", "is_governed", "version")
    list_filter = ("project", "is_governed")


class VariationInline(admin.TabularInline):
    model = Variation
    fields = ("key", "name", "value", "risk_rank")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Flag)
class FlagAdmin(ReadOnlyAdmin):
    list_display = ("key", "project", "behavior_surface", "value_type", "lifetime", "stage", "review_date")
    list_filter = ("project", "behavior_surface", "lifetime", "stage")
    search_fields = ("key", "name")
    inlines = [VariationInline]


@admin.register(Segment)
class SegmentAdmin(ReadOnlyAdmin):
    list_display = ("key", "name", "project")
    list_filter = ("project",)


@admin.register(Targeting)
class TargetingAdmin(ReadOnlyAdmin):
    list_display = ("flag", "environment", "enabled", "version", "updated_at")
    list_filter = ("environment__project", "environment", "enabled")


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    list_display = ("user", "project", "role")
    list_filter = ("project", "role")


@admin.register(SdkKey)
class SdkKeyAdmin(ReadOnlyAdmin):
    list_display = ("name", "prefix", "environment", "created_at", "last_used_at", "revoked_at")
    exclude = ("key_hash",)
