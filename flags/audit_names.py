"""Names and links of the catalog's audit targets (flags, variations, segments, environments,
projects, members, SDK keys, API tokens), for the audit trail as it is read: see audit.naming.
One query per target type on a page; a target that is gone (or not where the row says it was)
keeps the label its row recorded."""

from __future__ import annotations

from collections.abc import Sequence

from django.urls import reverse

from audit.models import AuditEvent
from audit.naming import TargetName, named, names, target_ids
from flags.models import AccessToken, Environment, Flag, Membership, Project, SdkKey, Segment, Variation


def _flag_url(flag: Flag) -> str:
    return reverse("flags:flag_detail", kwargs={"project_key": flag.project.key, "flag_key": flag.key})


def _in_place(by_id: dict[int, list[AuditEvent]], project_of: dict[int, int | None]) -> dict[int, list[AuditEvent]]:
    """Only the rows whose target still belongs to the project the row was written in."""
    return {pk: [e for e in rows if project_of.get(pk) == e.project_id] for pk, rows in by_id.items()}


@names("flags.flag")
def flag_names(events: Sequence[AuditEvent]) -> dict[int, TargetName]:
    by_id = target_ids(events)
    flags = {f.pk: f for f in Flag.objects.filter(pk__in=by_id).select_related("project")}
    found = {pk: TargetName(f.key, _flag_url(f)) for pk, f in flags.items()}
    return named(_in_place(by_id, {pk: f.project_id for pk, f in flags.items()}), found)


@names("flags.variation")
def variation_names(events: Sequence[AuditEvent]) -> dict[int, TargetName]:
    by_id = target_ids(events)
    variations = {v.pk: v for v in Variation.objects.filter(pk__in=by_id).select_related("flag__project")}
    found = {pk: TargetName(f"variation {v.key} of {v.flag.key}", _flag_url(v.flag)) for pk, v in variations.items()}
    return named(_in_place(by_id, {pk: v.flag.project_id for pk, v in variations.items()}), found)


@names("flags.segment")
def segment_names(events: Sequence[AuditEvent]) -> dict[int, TargetName]:
    by_id = target_ids(events)
    segments = {s.pk: s for s in Segment.objects.filter(pk__in=by_id).select_related("project")}
    found = {pk: TargetName(f"segment {s.key}" + (f" ({s.name})" if s.name and s.name != s.key else ""),
                            reverse("flags:segment_list", kwargs={"project_key": s.project.key}) + f"#segment-{s.key}")
             for pk, s in segments.items()}
    return named(_in_place(by_id, {pk: s.project_id for pk, s in segments.items()}), found)


@names("flags.environment")
def environment_names(events: Sequence[AuditEvent]) -> dict[int, TargetName]:
    by_id = target_ids(events)
    environments = {e.pk: e for e in Environment.objects.filter(pk__in=by_id)}
    found = {pk: TargetName(f"environment {e.name}") for pk, e in environments.items()}
    return named(_in_place(by_id, {pk: e.project_id for pk, e in environments.items()}), found)


@names("flags.project")
def project_names(events: Sequence[AuditEvent]) -> dict[int, TargetName]:
    by_id = target_ids(events)
    projects = {p.pk: p for p in Project.objects.filter(pk__in=by_id)}
    found = {pk: TargetName(f"project {p.name}", reverse("flags:flag_list", kwargs={"project_key": p.key}))
             for pk, p in projects.items()}
    return named(_in_place(by_id, {pk: pk for pk in projects}), found)


@names("flags.membership")
def member_names(events: Sequence[AuditEvent]) -> dict[int, TargetName]:
    # Members and SDK keys live on pages for project admins only: named, not linked, so an
    # auditor is not sent to a page that refuses them.
    by_id = target_ids(events)
    memberships = {m.pk: m for m in Membership.objects.filter(pk__in=by_id).select_related("user")}
    found = {pk: TargetName(f"{m.user.get_full_name() or m.user.get_username()} as {m.get_role_display()}")
             for pk, m in memberships.items()}
    return named(_in_place(by_id, {pk: m.project_id for pk, m in memberships.items()}), found)


@names("flags.sdkkey")
def sdk_key_names(events: Sequence[AuditEvent]) -> dict[int, TargetName]:
    by_id = target_ids(events)
    keys = {k.pk: k for k in SdkKey.objects.filter(pk__in=by_id).select_related("environment")}
    found = {pk: TargetName(f"SDK key {k.name} ({k.prefix}…) for {k.environment.name}") for pk, k in keys.items()}
    return named(_in_place(by_id, {pk: k.environment.project_id for pk, k in keys.items()}), found)


@names("flags.accesstoken")
def access_token_names(events: Sequence[AuditEvent]) -> dict[int, TargetName]:
    by_id = target_ids(events)
    tokens = {t.pk: t for t in AccessToken.objects.filter(pk__in=by_id)}
    found = {pk: TargetName(f"API token {t.name} ({t.prefix}…)") for pk, t in tokens.items()}
    return named(_in_place(by_id, {pk: t.project_id for pk, t in tokens.items()}), found)
