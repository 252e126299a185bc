"""Management commands: the demo seed and SDK key creation."""

from __future__ import annotations

import datetime
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit.models import AuditEvent
from flags.demo import DEMO_USERS
from flags.models import Flag, Membership, Project, SdkKey, Segment, Targeting, Variation
from flags.services import hash_sdk_key

pytestmark = pytest.mark.django_db


def _counts() -> dict[str, int]:
    return {model.__name__: model.objects.count()
            for model in (Project, Flag, Variation, Segment, Targeting, Membership, AuditEvent)}


def test_seed_demo__run_twice__same_catalog_and_no_new_audit_rows() -> None:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    first = _counts()
    call_command("seed_demo", stdout=StringIO())
    assert _counts() == first
    # The logins are printed, one per role of the product brief.
    for demo in DEMO_USERS:
        assert demo.username in out.getvalue()


def test_seed_demo__catalog__matches_the_seed_articles() -> None:
    call_command("seed_demo", stdout=StringIO())
    project = Project.objects.get(key="support-assistant")
    assert list(project.environments.values_list("key", "is_governed")) == [
        ("development", False), ("staging", False), ("production", True)]
    profile = Flag.objects.get(project=project, key="support_assistant_profile")
    assert [v.key for v in profile.variations.all()] == ["baseline_v3", "citation_first_v4", "fallback_human_review"]
    assert profile.fallback_variation.key == "baseline_v3" and profile.json_schema["title"] == "SupportAiProfile"
    tool_mode = Flag.objects.get(project=project, key="support_agent_tool_mode")
    ranks = dict(tool_mode.variations.values_list("key", "risk_rank"))
    assert ranks["none"] < ranks["read_only"] < ranks["approval_required"] < ranks["write"]
    incident = Flag.objects.get(project=project, key="support_ai_incident_fallback")
    assert not incident.is_temporary
    assert set(incident.variations.values_list("key", flat=True)) == {"baseline_model", "cached_answer",
                                                                       "human_escalation", "off"}
    assert set(project.segments.values_list("key", flat=True)) == {"internal_users", "beta_accounts"}
    today = timezone.localdate()
    review_dates = [f.review_date for f in project.flags.all()]
    assert any(d < today for d in review_dates)
    assert any(today <= d <= today + datetime.timedelta(days=7) for d in review_dates)
    # Targeting in each environment uses the segments.
    production = Targeting.objects.get(flag=profile, environment__key="production")
    assert any(c.get("values") == ["beta_accounts"] for rule in production.rules for c in rule["clauses"])
    assert set(Membership.objects.filter(project=project).values_list("role", flat=True)) == {
        "viewer", "editor", "approver", "operator", "auditor", "admin"}


def test_create_sdk_key__known_environment__prints_key_stored_hashed() -> None:
    call_command("seed_demo", stdout=StringIO())
    out = StringIO()
    call_command("create_sdk_key", "--project", "support-assistant", "--environment", "production",
                 stdout=out, stderr=StringIO())
    raw_key = out.getvalue().strip()
    sdk_key = SdkKey.objects.get()
    assert sdk_key.key_hash == hash_sdk_key(raw_key) and sdk_key.environment.key == "production"
    assert AuditEvent.objects.filter(action="sdk_key.created", target_id=str(sdk_key.pk)).exists()


def test_create_sdk_key__unknown_environment__clear_error_and_nothing_created() -> None:
    call_command("seed_demo", stdout=StringIO())
    with pytest.raises(CommandError, match="No environment “prod” in project “support-assistant”"):
        call_command("create_sdk_key", "--project", "support-assistant", "--environment", "prod")
    assert not SdkKey.objects.exists()
