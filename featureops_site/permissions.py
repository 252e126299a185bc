"""Who may see the System status page (workers, queues, task failures) and its warning.

Site staff and superusers, who run the installation, and project admins: PRODUCT.md's platform
admin is the project admin role here, and the workers serve every project, so a stopped
`safety` worker means their scheduled applies and guardrail pauses stop happening. The page
holds no project data and changes nothing: worker names, queue depths and failure counts only.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from flags.permissions import projects_with


def can_view_system_status(user: AbstractBaseUser | AnonymousUser) -> bool:
    """Cached on the user for the request: the navigation asks on every page."""
    if not user.is_authenticated or not user.is_active:
        return False
    if getattr(user, "is_staff", False) or getattr(user, "is_superuser", False):
        return True
    cached = user.__dict__.get("_featureops_system_status")
    if cached is None:
        # manage_environments: held by the project admin role alone (flags.constants.ROLE_PERMISSIONS)
        cached = user.__dict__["_featureops_system_status"] = projects_with(user, "manage_environments").exists()
    return cached
