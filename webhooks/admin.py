from __future__ import annotations

from django.contrib import admin

from audit.admin import ReadOnlyAdmin
from webhooks.models import Webhook, WebhookDelivery


@admin.register(Webhook)
class WebhookAdmin(ReadOnlyAdmin):
    list_display = ("id", "project_id", "__str__", "active", "created_at")
    list_filter = ("active",)
    exclude = ("secret",)  # shown once, at creation, in the console only


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "webhook", "event", "status", "attempts", "last_status_code")
    list_filter = ("status",)
    list_select_related = ("webhook",)
    date_hierarchy = "created_at"
