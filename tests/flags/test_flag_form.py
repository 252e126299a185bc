"""The flag form: creating a flag (JSON or boolean; its fallback, off targeting everywhere and the
audit row), its refusals beside the field, and editing the contract (audited before and after,
refused when stale)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.utils.html import escape

from audit.constants import ActorKind, AuditAction
from audit.models import AuditEvent
from flags import services
from flags.constants import KEY_ERROR, BehaviorSurface, LifecycleStage, Lifetime, ValueType
from flags.models import Environment, Flag, Project, Targeting
from tests.factories import TEST_ACTOR
from tests.flags.support import (
    PROFILE,
    TOOL_MODE,
    assert_form_refused,
    audit_events_since,
    audit_mark,
    catalog_state,
    console_url,
    demo_flag,
    flag_create_data,
    flag_edit_data,
)

PROMPT_SCHEMA = {"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string"}}}

# --- flag create -----------------------------------------------------------------------------


def _post_fallback_breaking_its_schema(client: Any) -> Any:
    """Create a JSON flag whose fallback value ({"prompt": 42}) breaks the flag's own JSON Schema."""
    return client.post(console_url("flag_create"), flag_create_data(
        json_schema=json.dumps(PROMPT_SCHEMA), fallback_value='{"prompt": 42}',
    ))


@pytest.mark.django_db
def test_flag_create__anonymous_post__redirects_to_login_and_saves_nothing(client: Any, demo: Project) -> None:
    # Given nobody is logged in
    before = catalog_state()
    # When a flag is posted
    response = client.post(console_url("flag_create"), flag_create_data())
    # Then the login page is asked for and nothing changed
    assert response.status_code == 302
    assert response.url.startswith("/login/")
    assert catalog_state() == before


@pytest.mark.django_db
def test_flag_create__valid_json_flag__creates_flag_fallback_and_off_targeting_everywhere(
    client: Any, login: Callable[[str], Any], demo: Project
) -> None:
    # Given an editor
    owner = login("owner")
    mark = audit_mark()
    # When a JSON flag is created with a fallback variation and a schema it satisfies
    response = client.post(console_url("flag_create"), flag_create_data(json_schema=json.dumps(PROMPT_SCHEMA)))
    # Then the browser goes to the new flag's page
    assert response.status_code == 302
    assert response.url == console_url("flag_detail", flag_key="support_summary_profile")
    # and the flag exists with its contract, as a draft created by the editor
    flag = demo_flag("support_summary_profile")
    assert flag.value_type == ValueType.JSON
    assert flag.name == "Support summary profile"
    assert flag.behavior_surface == BehaviorSurface.PROMPT_PROFILE
    assert flag.lifetime == Lifetime.EXPERIMENT
    assert flag.json_schema == PROMPT_SCHEMA
    assert flag.guardrail_metrics == ["latency_p95", "correction_rate"]
    assert sorted(t.name for t in flag.tags.all()) == ["summary", "support"]
    assert flag.stage == LifecycleStage.DRAFT
    assert flag.created_by == owner
    # with its one variation, the fallback, holding the parsed JSON value
    variations = list(flag.variations.all())
    assert [(v.key, v.value) for v in variations] == [("baseline", {"prompt": "summary_v1", "temperature": 0.2})]
    assert flag.fallback_variation == variations[0]
    # and an off targeting serving the fallback in each of the project's three environments
    targetings = Targeting.objects.filter(flag=flag).select_related("environment")
    assert sorted(t.environment.key for t in targetings) == ["development", "production", "staging"]
    for targeting in targetings:
        assert targeting.enabled is False
        assert targeting.default_serve == {"variation": "baseline"}
        assert targeting.rules == [] and targeting.targets == []
    # and one audit row records the creation by the editor
    events = audit_events_since(mark)
    assert [e.action for e in events] == [AuditAction.FLAG_CREATED]
    event = events[0]
    assert event.actor == owner and event.actor_kind == ActorKind.USER
    assert event.flag_id == flag.pk and event.project_id == demo.pk
    assert event.after["key"] == "support_summary_profile"
    assert [v["key"] for v in event.after["variations"]] == ["baseline"]


@pytest.mark.django_db
def test_flag_create__boolean_flag__gets_off_and_on_variations_with_off_as_fallback(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor
    owner = login("owner")
    mark = audit_mark()
    # When a boolean flag is created without naming a fallback
    response = client.post(console_url("flag_create"), flag_create_data(
        key="summary_enabled", value_type=ValueType.BOOLEAN, behavior_surface=BehaviorSurface.ROLLOUT,
        lifetime=Lifetime.RELEASE, fallback_key="", fallback_value="",
    ))
    # Then it is created with "off" (false, the fallback) and "on" (true)
    assert response.status_code == 302
    flag = demo_flag("summary_enabled")
    assert [(v.key, v.value) for v in flag.variations.order_by("sort_order")] == [("off", False), ("on", True)]
    assert flag.fallback_variation.key == "off"
    assert set(Targeting.objects.filter(flag=flag).values_list("enabled", flat=True)) == {False}
    assert Targeting.objects.filter(flag=flag).count() == 3
    assert [(e.action, e.actor, e.flag_id) for e in audit_events_since(mark)] == [
        (AuditAction.FLAG_CREATED, owner, flag.pk)
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field", "error"),
    [
        ({"key": TOOL_MODE, "value_type": ValueType.STRING, "fallback_value": "none"}, "key",
         f"A flag with key “{TOOL_MODE}” already exists in this project."),
        ({"key": "support summary"}, "key", KEY_ERROR),
        ({"key": "Support_Summary"}, "key", KEY_ERROR),
        ({"fallback_value": '{"prompt": "summary_v1",'}, "fallback_value", "Not valid JSON:"),
        ({"json_schema": '{"type": 12}'}, "json_schema", "Not a valid JSON Schema:"),
        ({"value_type": ValueType.NUMBER, "fallback_value": "lots"}, "fallback_value", "“lots” is not a number."),
        ({"value_type": ValueType.STRING, "fallback_value": "x", "json_schema": '{"type": "string"}'},
         "json_schema", "Only JSON flags take a JSON Schema."),
        ({"fallback_key": ""}, "fallback_key", "Name the fallback variation."),
        ({"value_type": ValueType.BOOLEAN, "fallback_key": "", "fallback_value": "maybe", "json_schema": ""},
         "fallback_value", "A boolean flag's fallback value is false: leave this empty (true is its “on” variation)."),
        ({"value_type": ValueType.BOOLEAN, "fallback_key": "enabled", "fallback_value": "", "json_schema": ""},
         "fallback_key", "A boolean flag's fallback is “off” (false): leave this empty."),
    ],
    ids=["duplicate-key", "key-with-spaces", "key-with-capitals", "malformed-fallback-json", "invalid-schema",
         "non-number-fallback", "schema-on-string-flag", "missing-fallback-key",
         "boolean-with-a-fallback-value", "boolean-with-a-fallback-key"],
)
def test_flag_create__bad_input__shows_error_beside_field_and_saves_nothing(
    client: Any, login: Callable[[str], Any], overrides: dict[str, str], field: str, error: str
) -> None:
    # Given an editor and the demo catalog
    login("owner")
    before = catalog_state()
    # When a flag is posted with one bad field
    response = client.post(console_url("flag_create"), flag_create_data(**overrides))
    # Then the form comes back (422) with the error beside that field, and nothing was saved or audited
    assert_form_refused(response, field, error, catalog_before=before)


@pytest.mark.django_db
def test_flag_create__fallback_value_violating_json_schema__shows_error_beside_fallback_value(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor
    login("owner")
    before = catalog_state()
    # When the fallback value breaks the flag's own JSON Schema
    response = _post_fallback_breaking_its_schema(client)
    # Then the form is refused, nothing is saved, and the error sits beside the fallback value
    assert_form_refused(response, "fallback_value", "does not match the flag's JSON Schema", catalog_before=before)


@pytest.mark.django_db
def test_flag_create__fallback_value_violating_json_schema__is_refused_and_saves_nothing(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor
    login("owner")
    before = catalog_state()
    # When the fallback value breaks the flag's own JSON Schema
    response = _post_fallback_breaking_its_schema(client)
    # Then the schema violation is shown on the form and the whole creation is rolled back
    assert response.status_code == 422
    errors = [e for errors in response.context["form"].errors.values() for e in errors]
    assert any("does not match the flag's JSON Schema" in e and "42 is not of type 'string'" in e for e in errors)
    assert escape("42 is not of type 'string'") in response.content.decode()
    assert catalog_state() == before
    assert not Flag.objects.filter(key="support_summary_profile").exists()


# --- flag edit -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_flag_edit__valid_contract_change__saves_and_audits_before_and_after(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor and the tool-mode flag at its first version
    owner = login("owner")
    flag = demo_flag(TOOL_MODE)
    old_name, old_metric, old_version = flag.name, flag.primary_metric, flag.version
    environment_versions = dict(Environment.objects.filter(project=flag.project).values_list("key", "version"))
    mark = audit_mark()
    # When the edit form is posted with a new name and primary metric
    response = client.post(console_url("flag_edit", flag_key=TOOL_MODE), flag_edit_data(
        flag, name="Support agent tool authority", primary_metric="write_approval_rate",
    ))
    # Then the browser returns to the flag and the contract is saved, one version up
    assert response.status_code == 302
    assert response.url == console_url("flag_detail", flag_key=TOOL_MODE)
    flag.refresh_from_db()
    assert flag.name == "Support agent tool authority"
    assert flag.primary_metric == "write_approval_rate"
    assert flag.version == old_version + 1
    # and every environment's version rose so evaluation picks the change up
    for environment in Environment.objects.filter(project=flag.project):
        assert environment.version == environment_versions[environment.key] + 1
    # and the audit row holds exactly the changed fields, before and after
    events = audit_events_since(mark)
    assert [e.action for e in events] == [AuditAction.FLAG_UPDATED]
    assert events[0].actor == owner and events[0].flag_id == flag.pk
    assert events[0].before == {"name": old_name, "primary_metric": old_metric}
    assert events[0].after == {"name": "Support agent tool authority", "primary_metric": "write_approval_rate"}


@pytest.mark.django_db
def test_flag_edit__json_flag_name_only__keeps_schema_and_audits_only_the_name(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given the JSON flag, whose edit form round-trips its JSON Schema as text
    login("owner")
    flag = demo_flag(PROFILE)
    schema, old_name = flag.json_schema, flag.name
    mark = audit_mark()
    # When only the name is changed
    response = client.post(console_url("flag_edit", flag_key=PROFILE), flag_edit_data(flag, name="Assistant profile"))
    # Then the schema is unchanged and the audit row names only the name
    assert response.status_code == 302
    flag.refresh_from_db()
    assert flag.json_schema == schema
    events = audit_events_since(mark)
    assert [e.action for e in events] == [AuditAction.FLAG_UPDATED]
    assert events[0].before == {"name": old_name}
    assert events[0].after == {"name": "Assistant profile"}


@pytest.mark.django_db
def test_flag_edit__stale_version__is_refused_with_message_and_saves_nothing(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor opened the edit form at the flag's current version
    owner = login("owner")
    flag = demo_flag(TOOL_MODE)
    stale_form = flag_edit_data(flag, name="My new name")
    # and someone else saved a change in the meantime
    services.flag_update(flag=flag, actor=TEST_ACTOR, name="Changed elsewhere")
    mark = audit_mark()
    # When the editor submits the form opened on the old version
    response = client.post(console_url("flag_edit", flag_key=TOOL_MODE), stale_form)
    # Then the save is refused with a message saying the flag changed
    assert response.status_code == 422
    form_errors = response.context["form"].non_field_errors()
    assert any("Someone changed this flag since you opened it" in e for e in form_errors)
    assert "Someone changed this flag since you opened it" in response.content.decode()
    # and the other change stands, unaudited by the editor
    flag.refresh_from_db()
    assert flag.name == "Changed elsewhere"
    assert audit_events_since(mark) == []
    assert not AuditEvent.objects.filter(actor=owner).exclude(action__startswith="auth.").exists()

