"""What the change-control views share: a flag's targeting in one environment (404 for an
unknown environment) and the flag page's URL with an anchor."""

from __future__ import annotations

from django.urls import reverse

from flags.models import Flag, Project, Targeting
from flags.shortcuts import first_or_404


def targeting_for(flag: Flag, environment_key: str) -> Targeting:
    return first_or_404(Targeting.objects.filter(flag=flag, environment__key=environment_key)
                        .select_related("environment", "flag__fallback_variation", "updated_by"), "environment")


def flag_url(project: Project, flag: Flag, anchor: str = "") -> str:
    url = reverse("flags:flag_detail", kwargs={"project_key": project.key, "flag_key": flag.key})
    return url + (f"#{anchor}" if anchor else "")
