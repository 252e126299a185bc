from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from api.site import api as api_v1
from api.site import not_found as api_not_found
from featureops_site.auth import ThrottledLoginView
from featureops_site.live import live_not_served_here
from featureops_site.status_views import system_status

urlpatterns = [
    # Pages name the icon in base.html; what asks for /favicon.ico anyway (the admin, a bare browser) is sent there.
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("admin/", admin.site.urls),
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
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
