"""Helpers of the console tests of the flag catalog's pages (and of the segment editor's,
tests/rollouts/test_segment_editor.py): the demo's keys, flags made for a test, URLs, the audit
rows since a mark, a picture of the whole catalog to compare after a refused request, the
error beside a form field, and what each form posts when submitted unchanged.

The demo catalog (flags.demo.seed_demo) is the fixture world: project "support-assistant" with
development, staging and a governed production, three flags, two segments and one user per role."""

from __future__ import annotations

import json
import re
from typing import Any

from django.db.models import Max
from django.urls import reverse
from django.utils.html import escape

from audit.models import AuditEvent
from flags import services
from flags.constants import BehaviorSurface, Lifetime, ValueType
from flags.forms import FlagEditForm, TargetingForm
from flags.models import Environment, Flag, Project, Segment, Targeting, Variation
from tests.factories import TEST_ACTOR

PROJECT = "support-assistant"
PROFILE = "support_assistant_profile"  # JSON flag with a JSON Schema, three variations
TOOL_MODE = "support_agent_tool_mode"  # string flag, tag "agent", surface agent_tools
INCIDENT = "support_ai_incident_fallback"  # string flag, team support-operations, tag "incident"
HTMX = {"HX-Request": "true"}


def string_flag(project: Project, key: str, **extra: Any) -> Flag:
    spec: dict[str, Any] = {
        "name": key.replace("_", " ").capitalize(),
        "behavior_surface": BehaviorSurface.ROLLOUT,
        "value_type": ValueType.STRING,
        "lifetime": Lifetime.RELEASE,
        "variations": [{"key": "safe", "value": "safe"}, {"key": "alt", "value": "alt", "risk_rank": 1}],
        "fallback_variation_key": "safe",
    }
    spec.update(extra)
    return services.flag_create(project=project, key=key, actor=TEST_ACTOR, **spec)


def boolean_flag(project: Project, key: str) -> Flag:
    return services.flag_create(
        project=project, key=key, name="Boolean flag", behavior_surface=BehaviorSurface.ROLLOUT,
        value_type=ValueType.BOOLEAN, lifetime=Lifetime.RELEASE,
        variations=[{"key": "off", "value": False}, {"key": "on", "value": True, "risk_rank": 1}],
        fallback_variation_key="off", actor=TEST_ACTOR,
    )


def demo_flag(key: str, project_key: str = PROJECT) -> Flag:
    return Flag.objects.get(project__key=project_key, key=key)


def demo_targeting(flag_key: str, environment_key: str) -> Targeting:
    return Targeting.objects.get(flag__project__key=PROJECT, flag__key=flag_key, environment__key=environment_key)


def console_url(name: str, **kwargs: str) -> str:
    kwargs.setdefault("project_key", PROJECT)
    return reverse(name if ":" in name else f"flags:{name}", kwargs=kwargs)


def audit_mark() -> int:
    return AuditEvent.objects.aggregate(top=Max("id"))["top"] or 0


def audit_events_since(mark: int, **filters: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(id__gt=mark, **filters).order_by("id"))


def catalog_state() -> dict[str, Any]:
    """A picture of everything a refused request must leave untouched."""
    return {
        "flags": sorted(Flag.objects.values_list("project_id", "key", "name", "version", "stage")),
        "variations": sorted(
            (flag_id, key, json.dumps(value, sort_keys=True), name)
            for flag_id, key, value, name in Variation.objects.values_list("flag_id", "key", "value", "name")
        ),
        "targetings": sorted(
            (pk, version, enabled, json.dumps(rules, sort_keys=True))
            for pk, version, enabled, rules in Targeting.objects.values_list("pk", "version", "enabled", "rules")
        ),
        "segments": sorted(Segment.objects.values_list("project_id", "key", "name", "version")),
        "environments": sorted(Environment.objects.values_list("pk", "version")),
        "audit_rows": AuditEvent.objects.count(),
    }


def field_errorlist(content: str, field: str) -> str:
    """The rendered error list placed beside one form field ("" when it has none): found through
    the id of the field's widget, whatever prefix the form gives its ids."""
    widget = re.search(rf'<(?:input|select|textarea)\b[^>]*\bname="{re.escape(field)}"[^>]*>', content)
    widget_id = re.search(r'\bid="([^"]+)"', widget.group(0)) if widget else None
    if widget_id is None:
        return ""
    match = re.search(rf'<ul class="errorlist" id="{re.escape(widget_id.group(1))}_error">(.*?)</ul>', content, re.S)
    return match.group(1) if match else ""


def assert_field_error(response: Any, field: str, fragment: str) -> None:
    """The error is attached to the field and rendered beside it, not only at the top.

    Full pages expose the form in the context; htmx partials (rendered by template-partials,
    which the test client does not instrument) are checked on their HTML alone."""
    if response.context is not None:
        form = response.context["form"]
        assert any(fragment in error for error in form.errors.get(field, [])), dict(form.errors)
    assert escape(fragment) in field_errorlist(response.content.decode(), field)


def assert_form_refused(response: Any, field: str, fragment: str, catalog_before: dict[str, Any]) -> None:
    """The form came back refused (422) with the error beside the field, and the catalog is as
    it was before (nothing saved, nothing audited)."""
    assert response.status_code == 422
    assert_field_error(response, field, fragment)
    assert catalog_state() == catalog_before


def context_messages(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def flag_create_data(**overrides: str) -> dict[str, str]:
    data = {
        "key": "support_summary_profile",
        "name": "Support summary profile",
        "value_type": ValueType.JSON,
        "behavior_surface": BehaviorSurface.PROMPT_PROFILE,
        "lifetime": Lifetime.EXPERIMENT,
        "description": "Should case summaries use the structured prompt?",
        "owner_team": "support-ai-platform",
        "primary_metric": "summary_acceptance_rate",
        "guardrail_metrics": "latency_p95, correction_rate",
        "rollback_action": "Serve the baseline summary prompt.",
        "tags": "support, summary",
        "fallback_key": "baseline",
        "fallback_value": '{"prompt": "summary_v1", "temperature": 0.2}',
        "json_schema": "",
    }
    data.update(overrides)
    return data


def flag_edit_data(flag: Flag, **overrides: Any) -> dict[str, str]:
    """What the edit form posts when submitted unchanged, with some fields overridden."""
    flag = Flag.objects.select_related("fallback_variation").get(pk=flag.pk)
    data: dict[str, str] = {}
    for name, value in FlagEditForm.initial_for(flag).items():
        if name == "json_schema" and flag.value_type != ValueType.JSON:
            continue
        data[name] = "" if value is None else (value.isoformat() if hasattr(value, "isoformat") else str(value))
    data.update({name: str(value) for name, value in overrides.items()})
    return data


def targeting_data(targeting: Targeting, **overrides: Any) -> dict[str, str]:
    """What the targeting form posts when submitted unchanged, with some fields overridden."""
    variations = list(targeting.flag.variations.all())
    data: dict[str, str] = {}
    for name, value in TargetingForm.initial_for(targeting, variations).items():
        if name == "enabled":
            if value:
                data["enabled"] = "on"
        elif value is not None:
            data[name] = str(value)
    for name, value in overrides.items():
        if name == "enabled" and value is False:
            data.pop("enabled", None)
        elif name == "rules" and not isinstance(value, str):
            data["rules"] = json.dumps(value)
        else:
            data[name] = str(value)
    return data

