from __future__ import annotations

from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from api.site import api as api_v1
from api.site import not_found as api_not_found
from featureops_site.auth import ThrottledLoginView, admin_login
from featureops_site.live import live_not_served_here
from featureops_site.status_views import system_status
from identity.views import logout

urlpatterns = [
    # Pages name the icon in base.html; what asks for /favicon.ico anyway (the admin, a bare browser) is sent there.
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("admin/login/", admin_login),  # before the admin's own: refuses passwords when LOCAL_PASSWORDS=0
    path("admin/", admin.site.urls),
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", logout, name="logout"),  # ends the identity provider's session too (identity/views.py)
    path("", include("identity.urls")),
    path("notifications/", include("notifications.urls")),
    # Site staff and project admins: workers, queues, task failures (/healthz, /readyz and /metrics
    # are served before Django, featureops_site/health.py).
    path("system/", system_status, name="system_status"),
    path("live/events", live_not_served_here, name="live_events"),
    path("api/v1/", api_v1.urls),
    re_path(r"^api/v1/", api_not_found),  # what no operation matches: a problem, not the console's 404 page
    path("", include("rollouts.urls")),
    path("", include("flags.urls")),
]
