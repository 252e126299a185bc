from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from webhooks.models import Webhook, WebhookDelivery


class _ReadOnly(admin.ModelAdmin):
    """Support staff may look; changes go through the console, where they are audited."""

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        return [f.name for f in self.model._meta.fields if f.name in self.get_fields(request, obj)]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Webhook)
class WebhookAdmin(_ReadOnly):
    list_display = ("id", "project_id", "__str__", "active", "created_at")
    list_filter = ("active",)
    exclude = ("secret",)  # shown once, at creation, in the console only


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(_ReadOnly):
    list_display = ("id", "created_at", "webhook", "event", "status", "attempts", "last_status_code")
    list_filter = ("status",)
    list_select_related = ("webhook",)
    date_hierarchy = "created_at"
