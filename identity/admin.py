"""Read-only in the admin: rules are edited on each project's sign-in page (audited there),
identities and IdP grants are written by sign-ins."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

from identity.models import GroupRoleRule, IdpGrant, OidcIdentity


class _ReadOnly(admin.ModelAdmin):
    def get_readonly_fields(self, request: HttpRequest, obj: Model | None = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


@admin.register(GroupRoleRule)
class GroupRoleRuleAdmin(_ReadOnly):
    list_display = ("project", "group", "role", "updated_at")
    list_select_related = ("project",)
    search_fields = ("group", "project__key")


@admin.register(OidcIdentity)
class OidcIdentityAdmin(_ReadOnly):
    list_display = ("subject", "issuer", "user", "created_at", "last_sign_in_at")
    list_select_related = ("user",)
    search_fields = ("subject", "user__username")


@admin.register(IdpGrant)
class IdpGrantAdmin(_ReadOnly):
    list_display = ("membership", "group", "issuer", "granted_at")
    list_select_related = ("membership__user", "membership__project")
