from __future__ import annotations

from django.urls import path

from flags import audit_views, project_views, rule_editor_views, token_views, views, webhook_views

app_name = "flags"

_flag = "p/<slug:project_key>/flags/<slug:flag_key>/"

urlpatterns = [
    path("", views.project_list, name="project_list"),
    path("p/<slug:project_key>/", views.flag_list, name="flag_list"),
    path("p/<slug:project_key>/flags/new/", views.flag_create, name="flag_create"),
    path(_flag, views.flag_detail, name="flag_detail"),
    path(_flag + "edit/", views.flag_edit, name="flag_edit"),
    path(_flag + "archive/", views.flag_archive, name="flag_archive"),
    path(_flag + "variations/new/", views.variation_create, name="variation_create"),
    path(_flag + "variations/<slug:variation_key>/", views.variation_row, name="variation_row"),
    path(_flag + "variations/<slug:variation_key>/edit/", views.variation_edit, name="variation_edit"),
    path(_flag + "variations/<slug:variation_key>/delete/", views.variation_delete, name="variation_delete"),
    path(_flag + "targeting/<slug:environment_key>/", views.targeting_edit, name="targeting_edit"),
    path(_flag + "targeting/<slug:environment_key>/toggle/", views.targeting_toggle, name="targeting_toggle"),
    path(_flag + "targeting/<slug:environment_key>/rule-editor/", rule_editor_views.targeting_rule_editor,
         name="targeting_rule_editor"),
    path("p/<slug:project_key>/rule-editor/segment/", rule_editor_views.segment_rule_editor, name="segment_rule_editor"),
    path(_flag + "history/", audit_views.flag_history, name="flag_history"),
    path("audit/", audit_views.audit_explorer, name="audit_explorer"),
    path("audit/events/<int:event_id>/", audit_views.audit_event_detail, name="audit_event_detail"),
    path("audit/export.<str:fmt>", audit_views.audit_export, name="audit_export"),
    path("p/<slug:project_key>/members/", project_views.members, name="members"),
    path("p/<slug:project_key>/members/grant/", project_views.member_grant, name="member_grant"),
    path("p/<slug:project_key>/time-zone/", project_views.project_time_zone, name="project_time_zone"),
    path("p/<slug:project_key>/members/revoke/", project_views.member_revoke, name="member_revoke"),
    path("p/<slug:project_key>/sdk-keys/", project_views.sdk_keys, name="sdk_keys"),
    path("p/<slug:project_key>/sdk-keys/<int:key_id>/revoke/", project_views.sdk_key_revoke, name="sdk_key_revoke"),
    path("account/api-tokens/", token_views.personal_tokens, name="personal_tokens"),
    path("account/api-tokens/<int:token_id>/revoke/", token_views.personal_token_revoke, name="personal_token_revoke"),
    path("p/<slug:project_key>/api-tokens/", token_views.service_tokens, name="service_tokens"),
    path("p/<slug:project_key>/api-tokens/<int:token_id>/revoke/", token_views.service_token_revoke,
         name="service_token_revoke"),
    path("p/<slug:project_key>/segments/", views.segment_list, name="segment_list"),
    path("p/<slug:project_key>/segments/<slug:segment_key>/delete/", views.segment_delete, name="segment_delete"),
    path("p/<slug:project_key>/webhooks/", webhook_views.webhooks, name="webhooks"),
    path("p/<slug:project_key>/webhooks/<int:webhook_id>/active/", webhook_views.webhook_set_active,
         name="webhook_set_active"),
    path("p/<slug:project_key>/webhooks/<int:webhook_id>/delete/", webhook_views.webhook_delete, name="webhook_delete"),
    path("p/<slug:project_key>/webhooks/<int:webhook_id>/test/", webhook_views.webhook_test, name="webhook_test"),
]
