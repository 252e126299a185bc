from __future__ import annotations

from django.urls import path

from identity import views

app_name = "identity"

urlpatterns = [
    # The sign-in itself (the provider's redirect URI is <console>/sso/callback/).
    path("sso/login/", views.SignInStart.as_view(), name="oidc_login"),
    path("sso/callback/", views.SignInCallback.as_view(), name="oidc_callback"),
    # Sign-in role rules and sessions.
    path("sso/rules/", views.all_rules, name="all_rules"),
    path("p/<slug:project_key>/sign-in/", views.project_sign_in, name="project_sign_in"),
    path("p/<slug:project_key>/sign-in/rules/", views.rule_create, name="rule_create"),
    path("p/<slug:project_key>/sign-in/rules/<int:rule_id>/", views.rule_update, name="rule_update"),
    path("p/<slug:project_key>/sign-in/rules/<int:rule_id>/delete/", views.rule_delete, name="rule_delete"),
    path("p/<slug:project_key>/sign-in/sessions/revoke/", views.sessions_revoke, name="sessions_revoke"),
]
