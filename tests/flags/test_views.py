"""Console view tests: the flag catalog pages, their htmx partials, permissions and audit rows.

The demo catalog (flags.demo.seed_demo) is the fixture world: project "support-assistant" with
development, staging and a governed production, three flags, two segments and one user per role.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.db.models import Max
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils.html import escape

from audit.constants import ActorKind, AuditAction
from audit.models import AuditEvent
from audit.services import SystemActor
from flags import services
from flags.constants import KEY_ERROR, BehaviorSurface, LifecycleStage, Lifetime, Role, ValueType
from flags.forms import FlagEditForm, TargetingForm
from flags.models import Environment, Flag, Project, Segment, Targeting, Variation

PROJECT = "support-assistant"
PROFILE = "support_assistant_profile"  # JSON flag with a JSON Schema, three variations
TOOL_MODE = "support_agent_tool_mode"  # string flag, tag "agent", surface agent_tools
INCIDENT = "support_ai_incident_fallback"  # string flag, team support-operations, tag "incident"
TEST_ACTOR = SystemActor("test")
HTMX = {"HX-Request": "true"}


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def login(client: Any, demo: Project, django_user_model: Any) -> Callable[[str], Any]:
    """Log the test client in as one of the demo users and return that user."""

    def log_in(username: str) -> Any:
        user = django_user_model.objects.get(username=username)
        client.force_login(user)
        return user

    return log_in


@pytest.fixture
def other_project(demo: Project) -> Project:
    """A second project nobody from the demo is a member of, with one flag and one segment."""
    project = services.project_create(key="other-project", name="Other project", actor=TEST_ACTOR)
    services.environment_create(project=project, key="development", name="Development", actor=TEST_ACTOR)
    _string_flag(project, "secret_rollout")
    services.segment_create(project=project, key="secret_segment", name="Secret segment", actor=TEST_ACTOR)
    return project


def _string_flag(project: Project, key: str, **extra: Any) -> Flag:
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


def _boolean_flag(project: Project, key: str) -> Flag:
    return services.flag_create(
        project=project, key=key, name="Boolean flag", behavior_surface=BehaviorSurface.ROLLOUT,
        value_type=ValueType.BOOLEAN, lifetime=Lifetime.RELEASE,
        variations=[{"key": "off", "value": False}, {"key": "on", "value": True, "risk_rank": 1}],
        fallback_variation_key="off", actor=TEST_ACTOR,
    )


def _flag(key: str, project_key: str = PROJECT) -> Flag:
    return Flag.objects.get(project__key=project_key, key=key)


def _targeting(flag_key: str, environment_key: str) -> Targeting:
    return Targeting.objects.get(flag__project__key=PROJECT, flag__key=flag_key, environment__key=environment_key)


def _url(name: str, **kwargs: str) -> str:
    kwargs.setdefault("project_key", PROJECT)
    return reverse(name if ":" in name else f"flags:{name}", kwargs=kwargs)


def _audit_mark() -> int:
    return AuditEvent.objects.aggregate(top=Max("id"))["top"] or 0


def _events_since(mark: int, **filters: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(id__gt=mark, **filters).order_by("id"))


def _catalog_state() -> dict[str, Any]:
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


def _listed_keys(response: Any) -> list[str]:
    """The flags a list response shows, read from the rendered links (htmx partials carry no context)."""
    keys = re.findall(rf'<a href="/p/{PROJECT}/flags/([^/"]+)/"><strong>', response.content.decode())
    if response.context is not None:
        assert keys == [flag.key for flag in response.context["flags"]]
    return keys


def _field_errorlist(content: str, field: str) -> str:
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
    assert escape(fragment) in _field_errorlist(response.content.decode(), field)


def _messages(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def _flag_create_data(**overrides: str) -> dict[str, str]:
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


def _flag_edit_data(flag: Flag, **overrides: Any) -> dict[str, str]:
    """What the edit form posts when submitted unchanged, with some fields overridden."""
    flag = Flag.objects.select_related("fallback_variation").get(pk=flag.pk)
    data: dict[str, str] = {}
    for name, value in FlagEditForm.initial_for(flag).items():
        if name == "json_schema" and flag.value_type != ValueType.JSON:
            continue
        data[name] = "" if value is None else (value.isoformat() if hasattr(value, "isoformat") else str(value))
    data.update({name: str(value) for name, value in overrides.items()})
    return data


def _targeting_data(targeting: Targeting, **overrides: Any) -> dict[str, str]:
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


# --- login and projects ----------------------------------------------------------------------


@pytest.mark.django_db
def test_project_list__anonymous__redirects_to_login(client: Any, demo: Project) -> None:
    # Given nobody is logged in
    # When the project list is requested
    response = client.get(reverse("flags:project_list"))
    # Then the login page is asked for, coming back to the list afterwards
    assert response.status_code == 302
    assert response.url.startswith("/login/")
    assert "next=/" in response.url


@pytest.mark.django_db
def test_flag_create__anonymous_post__redirects_to_login_and_saves_nothing(client: Any, demo: Project) -> None:
    # Given nobody is logged in
    before = _catalog_state()
    # When a flag is posted
    response = client.post(_url("flag_create"), _flag_create_data())
    # Then the login page is asked for and nothing changed
    assert response.status_code == 302
    assert response.url.startswith("/login/")
    assert _catalog_state() == before


@pytest.mark.django_db
def test_project_list__user_with_one_membership__lists_only_that_project(
    client: Any, login: Callable[[str], Any], other_project: Project
) -> None:
    # Given the owner is a member of the demo project only
    login("owner")
    # When the owner opens the project list
    response = client.get(reverse("flags:project_list"))
    # Then only the demo project is listed, with a link to its flags
    assert response.status_code == 200
    assert [p.key for p in response.context["projects"]] == [PROJECT]
    content = response.content.decode()
    assert _url("flag_list") in content
    assert _url("flag_list", project_key=other_project.key) not in content
    assert other_project.name not in content


@pytest.mark.django_db
def test_flag_list__non_member__answers_404(client: Any, login: Callable[[str], Any], other_project: Project) -> None:
    # Given the owner holds no role in the other project
    login("owner")
    # When the owner opens that project's flag list directly
    response = client.get(_url("flag_list", project_key=other_project.key))
    # Then the project does not exist for them
    assert response.status_code == 404


# --- flag list -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_flag_list__no_filter__lists_every_flag_of_the_project_as_a_full_page(
    client: Any, login: Callable[[str], Any], other_project: Project
) -> None:
    # Given the demo project has three flags and another project has one
    login("owner")
    # When the flag list is opened without filters
    response = client.get(_url("flag_list"))
    # Then the full page lists the three demo flags, sorted by key, and not the other project's flag
    assert response.status_code == 200
    assert _listed_keys(response) == sorted([PROFILE, TOOL_MODE, INCIDENT])
    content = response.content.decode()
    assert "<html" in content
    assert 'role="search"' in content
    assert "secret_rollout" not in content


@pytest.mark.django_db
def test_flag_list__htmx_request__returns_only_the_table_partial(client: Any, login: Callable[[str], Any]) -> None:
    # Given a logged-in member
    login("owner")
    # When the filter form asks for the list through htmx
    response = client.get(_url("flag_list"), {"surface": BehaviorSurface.AGENT_TOOLS}, headers=HTMX)
    # Then only the table fragment comes back: no page, no filter form
    assert response.status_code == 200
    content = response.content.decode()
    assert "<html" not in content
    assert 'role="search"' not in content
    assert content.strip().startswith('<div id="flag-table">')
    assert _url("flag_detail", flag_key=TOOL_MODE) in content
    assert _url("flag_detail", flag_key=PROFILE) not in content


@pytest.mark.django_db
def test_flag_list__htmx_history_restore__returns_the_full_page(client: Any, login: Callable[[str], Any]) -> None:
    # Given a logged-in member who filtered the list through htmx, then pressed Back after a cache miss
    login("owner")
    # When htmx asks for the page to restore history
    response = client.get(_url("flag_list"), {"tag": "incident"},
                          headers={**HTMX, "HX-History-Restore-Request": "true"})
    # Then the whole page comes back, still filtered, and caches are told the answer varies with HX-Request
    assert response.status_code == 200
    content = response.content.decode()
    assert "<html" in content and 'role="search"' in content
    assert _listed_keys(response) == [INCIDENT]
    assert "HX-Request" in response["Vary"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"surface": BehaviorSurface.AGENT_TOOLS}, [TOOL_MODE]),
        ({"surface": BehaviorSurface.AI_PROFILE}, [PROFILE]),
        ({"tag": "incident"}, [INCIDENT]),
        ({"tag": "support"}, sorted([PROFILE, TOOL_MODE, INCIDENT])),
        ({"owner": "team:support-operations"}, [INCIDENT]),
        # the profile flag is temporary and its review date is three days past: cleanup due
        ({"stage": LifecycleStage.CLEANUP_DUE}, [PROFILE]),
        ({"q": "tool_mode"}, [TOOL_MODE]),  # by key
        ({"q": "INCIDENT Fallback"}, [INCIDENT]),  # by name, case-insensitively (the key has underscores)
        ({"surface": BehaviorSurface.FALLBACK_MODE, "tag": "agent"}, []),  # filters combine
    ],
    ids=["surface-tools", "surface-profile", "tag-incident", "tag-support", "owner-team", "stage", "q-key",
         "q-name", "combined"],
)
def test_flag_list__filter__lists_only_matching_flags(
    client: Any, login: Callable[[str], Any], params: dict[str, str], expected: list[str]
) -> None:
    # Given the demo catalog
    login("owner")
    # When the list is filtered
    response = client.get(_url("flag_list"), params)
    # Then exactly the matching flags are listed
    assert response.status_code == 200
    assert _listed_keys(response) == expected
    content = response.content.decode()
    for key in {PROFILE, TOOL_MODE, INCIDENT} - set(expected):
        assert _url("flag_detail", flag_key=key) not in content


@pytest.mark.django_db
def test_flag_list__owner_user_filter__lists_flags_owned_by_that_person(
    client: Any, login: Callable[[str], Any], demo: Project, django_user_model: Any
) -> None:
    # Given a draft flag owned by the admin, beside the demo flags owned by the owner
    admin = django_user_model.objects.get(username="admin")
    owner = login("owner")
    _string_flag(demo, "admin_owned_rollout", owner_user=admin)
    # When the list is filtered by each person
    by_admin = client.get(_url("flag_list"), {"owner": f"user:{admin.pk}"})
    by_owner = client.get(_url("flag_list"), {"owner": f"user:{owner.pk}"})
    drafts = client.get(_url("flag_list"), {"stage": LifecycleStage.DRAFT})
    # Then each lists only that person's flags, and the new flag is the only draft
    assert _listed_keys(by_admin) == ["admin_owned_rollout"]
    assert _listed_keys(by_owner) == sorted([PROFILE, TOOL_MODE, INCIDENT])
    assert _listed_keys(drafts) == ["admin_owned_rollout"]
    # and both people are offered as owner choices
    owner_values = [value for value, _label in by_admin.context["owners"]]
    assert f"user:{admin.pk}" in owner_values
    assert f"user:{owner.pk}" in owner_values


@pytest.mark.django_db
@pytest.mark.parametrize("params", [{"q": "no-such-flag-anywhere"}, {"owner": "nonsense"}, {"tag": "no-such-tag"}])
def test_flag_list__filter_matching_nothing__shows_no_match_empty_state(
    client: Any, login: Callable[[str], Any], params: dict[str, str]
) -> None:
    # Given the demo catalog
    login("owner")
    # When the filter matches no flag (full page and htmx partial alike)
    page = client.get(_url("flag_list"), params)
    partial = client.get(_url("flag_list"), params, headers=HTMX)
    # Then the empty state says no flag matches and offers to clear the filters
    for response in (page, partial):
        assert response.status_code == 200
        assert _listed_keys(response) == []
        content = response.content.decode()
        assert "No flag matches" in content
        assert f'href="{_url("flag_list")}">Clear filters' in content
        assert "<table" not in content


@pytest.mark.django_db
def test_flag_list__more_flags__does_not_issue_more_queries(
    client: Any, login: Callable[[str], Any], demo: Project, django_user_model: Any
) -> None:
    # Given the demo project with its 3 flags (owned, tagged, targeted in 3 environments)
    admin = django_user_model.objects.get(username="admin")
    login("owner")
    with CaptureQueriesContext(connection) as with_3:
        response = client.get(_url("flag_list"))
    assert len(response.context["flags"]) == 3
    # When 7 more flags with owners, teams and tags are added
    for index in range(7):
        _string_flag(demo, f"extra_flag_{index}", owner_user=admin, owner_team=f"team-{index}",
                     tags=[f"tag-{index}", "extra"])
    with CaptureQueriesContext(connection) as with_10:
        response = client.get(_url("flag_list"))
    # Then the list of 10 flags costs the same number of queries as the list of 3
    assert len(response.context["flags"]) == 10
    assert len(with_10.captured_queries) == len(with_3.captured_queries)


# --- flag detail -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_flag_detail__json_flag__shows_contract_variations_and_targeting(client: Any, login: Callable[[str], Any]) -> None:
    # Given the demo JSON flag with its contract, three variations and three environments
    login("owner")
    flag = _flag(PROFILE)
    # When its page is opened
    response = client.get(_url("flag_detail", flag_key=PROFILE))
    # Then the contract fields are shown
    assert response.status_code == 200
    content = response.content.decode()
    for text in (flag.description, "Fatima Owner", flag.owner_team, flag.primary_metric, flag.rollback_action,
                 flag.cleanup_rule, flag.first_audience, *flag.guardrail_metrics,
                 Lifetime(flag.lifetime).label, BehaviorSurface(flag.behavior_surface).label):
        assert escape(text) in content, text
    assert "<dt>Fallback variation</dt><dd><code>baseline_v3</code></dd>" in content
    # and each of the three variations with its JSON value pretty-printed (indented, one key per line)
    variations = list(flag.variations.all())
    assert len(variations) == 3
    for variation in variations:
        pretty = json.dumps(variation.value, indent=2)
        assert "\n  " in pretty
        assert f"<pre>{escape(pretty)}</pre>" in content
    assert content.count('data-testid="variation"') == 3
    # and one targeting card per environment, with its rules and default rule
    for environment in ("development", "staging", "production"):
        assert f'data-testid="targeting-{environment}"' in content
    staging = _card(content, "staging")
    assert "in segment internal_users" in staging
    assert "baseline_v3 50 % / citation_first_v4 50 %" in staging
    assert "baseline_v3 95 % / citation_first_v4 5 %" in _card(content, "production")


@pytest.mark.django_db
def test_flag_detail__json_value_with_accents__is_shown_as_typed(
    client: Any, login: Callable[[str], Any], demo: Project
) -> None:
    # Given a JSON flag whose variation holds French text
    services.flag_create(
        project=demo, key="french_prompt", name="French prompt", behavior_surface=BehaviorSurface.PROMPT_PROFILE,
        value_type=ValueType.JSON, lifetime=Lifetime.EXPERIMENT,
        variations=[{"key": "fr", "value": {"prompt": "Réponse citée"}}], fallback_variation_key="fr",
        actor=TEST_ACTOR,
    )
    login("owner")
    # When the flag page is opened
    content = client.get(_url("flag_detail", flag_key="french_prompt")).content.decode()
    # Then the text reads as typed, not as escape sequences
    assert escape('"prompt": "Réponse citée"') in content


def _card(content: str, environment: str) -> str:
    """The HTML of one environment's targeting card."""
    start = content.index(f'data-testid="targeting-{environment}"')
    following = content.find('data-testid="targeting-', start + 1)
    end = following if following != -1 else content.index("</section>", start)
    return content[start:end]


@pytest.mark.django_db
def test_flag_detail__production_card__says_governed_and_offers_a_proposal_not_a_toggle(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor viewing a flag that serves in production
    login("owner")
    # When the flag page is opened
    content = client.get(_url("flag_detail", flag_key=TOOL_MODE)).content.decode()
    # Then the production card says governed, offers a proposal (a change request when risky),
    # and neither the direct toggle nor the direct editor
    production = _card(content, "production")
    assert "governed" in production
    assert "changes that raise risk wait for approval" in production
    assert f"/p/{PROJECT}/flags/{TOOL_MODE}/propose/production/" in production
    assert "Turn off" not in production and "Turn on" not in production
    assert _url("targeting_toggle", flag_key=TOOL_MODE, environment_key="production") not in content
    assert _url("targeting_edit", flag_key=TOOL_MODE, environment_key="production") not in content
    # while development, not governed, can be toggled and edited by this editor
    development = _card(content, "development")
    assert "read-only" not in development
    assert _url("targeting_toggle", flag_key=TOOL_MODE, environment_key="development") in development
    assert _url("targeting_edit", flag_key=TOOL_MODE, environment_key="development") in development


@pytest.mark.django_db
def test_flag_detail__auditor__can_read_but_gets_no_edit_controls(client: Any, login: Callable[[str], Any]) -> None:
    # Given the auditor, a read-only role
    login("auditor")
    # When the auditor opens a flag
    response = client.get(_url("flag_detail", flag_key=TOOL_MODE))
    # Then the page is readable but offers no way to change anything
    assert response.status_code == 200
    content = response.content.decode()
    assert _url("flag_edit", flag_key=TOOL_MODE) not in content
    assert _url("variation_create", flag_key=TOOL_MODE) not in content
    assert "/toggle/" not in content
    assert "Edit targeting" not in content


# --- flag create -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_flag_create__valid_json_flag__creates_flag_fallback_and_off_targeting_everywhere(
    client: Any, login: Callable[[str], Any], demo: Project
) -> None:
    # Given an editor
    owner = login("owner")
    mark = _audit_mark()
    schema = {"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string"}}}
    # When a JSON flag is created with a fallback variation and a schema it satisfies
    response = client.post(_url("flag_create"), _flag_create_data(json_schema=json.dumps(schema)))
    # Then the browser goes to the new flag's page
    assert response.status_code == 302
    assert response.url == _url("flag_detail", flag_key="support_summary_profile")
    # and the flag exists with its contract, as a draft created by the editor
    flag = _flag("support_summary_profile")
    assert flag.value_type == ValueType.JSON
    assert flag.name == "Support summary profile"
    assert flag.behavior_surface == BehaviorSurface.PROMPT_PROFILE
    assert flag.lifetime == Lifetime.EXPERIMENT
    assert flag.json_schema == schema
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
    events = _events_since(mark)
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
    mark = _audit_mark()
    # When a boolean flag is created without naming a fallback
    response = client.post(_url("flag_create"), _flag_create_data(
        key="summary_enabled", value_type=ValueType.BOOLEAN, behavior_surface=BehaviorSurface.ROLLOUT,
        lifetime=Lifetime.RELEASE, fallback_key="", fallback_value="",
    ))
    # Then it is created with "off" (false, the fallback) and "on" (true)
    assert response.status_code == 302
    flag = _flag("summary_enabled")
    assert [(v.key, v.value) for v in flag.variations.order_by("sort_order")] == [("off", False), ("on", True)]
    assert flag.fallback_variation.key == "off"
    assert set(Targeting.objects.filter(flag=flag).values_list("enabled", flat=True)) == {False}
    assert Targeting.objects.filter(flag=flag).count() == 3
    assert [(e.action, e.actor, e.flag_id) for e in _events_since(mark)] == [
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
    ],
    ids=["duplicate-key", "key-with-spaces", "key-with-capitals", "malformed-fallback-json", "invalid-schema",
         "non-number-fallback", "schema-on-string-flag", "missing-fallback-key"],
)
def test_flag_create__bad_input__shows_error_beside_field_and_saves_nothing(
    client: Any, login: Callable[[str], Any], overrides: dict[str, str], field: str, error: str
) -> None:
    # Given an editor and the demo catalog
    login("owner")
    before = _catalog_state()
    # When a flag is posted with one bad field
    response = client.post(_url("flag_create"), _flag_create_data(**overrides))
    # Then the form comes back (422) with the error beside that field
    assert response.status_code == 422
    assert_field_error(response, field, error)
    # and nothing was saved or audited
    assert _catalog_state() == before


@pytest.mark.django_db
def test_flag_create__fallback_value_violating_json_schema__shows_error_beside_fallback_value(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor
    login("owner")
    before = _catalog_state()
    schema = {"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string"}}}
    # When the fallback value breaks the flag's own JSON Schema
    response = client.post(_url("flag_create"), _flag_create_data(
        json_schema=json.dumps(schema), fallback_value='{"prompt": 42}',
    ))
    # Then the form is refused, nothing is saved, and the error sits beside the fallback value
    assert response.status_code == 422
    assert _catalog_state() == before
    assert_field_error(response, "fallback_value", "does not match the flag's JSON Schema")


@pytest.mark.django_db
def test_flag_create__fallback_value_violating_json_schema__is_refused_and_saves_nothing(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor
    login("owner")
    before = _catalog_state()
    schema = {"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string"}}}
    # When the fallback value breaks the flag's own JSON Schema
    response = client.post(_url("flag_create"), _flag_create_data(
        json_schema=json.dumps(schema), fallback_value='{"prompt": 42}',
    ))
    # Then the schema violation is shown on the form and the whole creation is rolled back
    assert response.status_code == 422
    errors = [e for errors in response.context["form"].errors.values() for e in errors]
    assert any("does not match the flag's JSON Schema" in e and "42 is not of type 'string'" in e for e in errors)
    assert escape("42 is not of type 'string'") in response.content.decode()
    assert _catalog_state() == before
    assert not Flag.objects.filter(key="support_summary_profile").exists()


# --- flag edit -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_flag_edit__valid_contract_change__saves_and_audits_before_and_after(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor and the tool-mode flag at its first version
    owner = login("owner")
    flag = _flag(TOOL_MODE)
    old_name, old_metric, old_version = flag.name, flag.primary_metric, flag.version
    environment_versions = dict(Environment.objects.filter(project=flag.project).values_list("key", "version"))
    mark = _audit_mark()
    # When the edit form is posted with a new name and primary metric
    response = client.post(_url("flag_edit", flag_key=TOOL_MODE), _flag_edit_data(
        flag, name="Support agent tool authority", primary_metric="write_approval_rate",
    ))
    # Then the browser returns to the flag and the contract is saved, one version up
    assert response.status_code == 302
    assert response.url == _url("flag_detail", flag_key=TOOL_MODE)
    flag.refresh_from_db()
    assert flag.name == "Support agent tool authority"
    assert flag.primary_metric == "write_approval_rate"
    assert flag.version == old_version + 1
    # and every environment's version rose so evaluation picks the change up
    for environment in Environment.objects.filter(project=flag.project):
        assert environment.version == environment_versions[environment.key] + 1
    # and the audit row holds exactly the changed fields, before and after
    events = _events_since(mark)
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
    flag = _flag(PROFILE)
    schema, old_name = flag.json_schema, flag.name
    mark = _audit_mark()
    # When only the name is changed
    response = client.post(_url("flag_edit", flag_key=PROFILE), _flag_edit_data(flag, name="Assistant profile"))
    # Then the schema is unchanged and the audit row names only the name
    assert response.status_code == 302
    flag.refresh_from_db()
    assert flag.json_schema == schema
    events = _events_since(mark)
    assert [e.action for e in events] == [AuditAction.FLAG_UPDATED]
    assert events[0].before == {"name": old_name}
    assert events[0].after == {"name": "Assistant profile"}


@pytest.mark.django_db
def test_flag_edit__stale_version__is_refused_with_message_and_saves_nothing(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor opened the edit form at the flag's current version
    owner = login("owner")
    flag = _flag(TOOL_MODE)
    stale_form = _flag_edit_data(flag, name="My new name")
    # and someone else saved a change in the meantime
    services.flag_update(flag=flag, actor=TEST_ACTOR, name="Changed elsewhere")
    mark = _audit_mark()
    # When the editor submits the form opened on the old version
    response = client.post(_url("flag_edit", flag_key=TOOL_MODE), stale_form)
    # Then the save is refused with a message saying the flag changed
    assert response.status_code == 422
    form_errors = response.context["form"].non_field_errors()
    assert any("Someone changed this flag since you opened it" in e for e in form_errors)
    assert "Someone changed this flag since you opened it" in response.content.decode()
    # and the other change stands, unaudited by the editor
    flag.refresh_from_db()
    assert flag.name == "Changed elsewhere"
    assert _events_since(mark) == []
    assert not AuditEvent.objects.filter(actor=owner).exclude(action__startswith="auth.").exists()


# --- variations ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_variation_edit__htmx_get__returns_the_edit_form_partial(client: Any, login: Callable[[str], Any]) -> None:
    # Given an editor
    login("owner")
    # When the Edit button fetches the inline form
    response = client.get(_url("variation_edit", flag_key=INCIDENT, variation_key="cached_answer"), headers=HTMX)
    # Then only the inline form comes back, prefilled with the variation
    assert response.status_code == 200
    content = response.content.decode()
    assert "<html" not in content
    assert content.strip().startswith('<form class="variation-edit stack" id="variation-cached_answer"')
    assert 'value="cached_answer"' in content
    assert _url("variation_delete", flag_key=INCIDENT, variation_key="cached_answer") in content


@pytest.mark.django_db
def test_variation_edit__htmx_post_valid__returns_row_partial_with_new_value_and_audits(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor and the "cached_answer" variation of the incident flag
    owner = login("owner")
    variation = Variation.objects.get(flag__key=INCIDENT, key="cached_answer")
    old_value = variation.value
    mark = _audit_mark()
    # When the inline form is posted with a new value
    response = client.post(
        _url("variation_edit", flag_key=INCIDENT, variation_key="cached_answer"),
        {"name": variation.name, "value": "cached_answer_v2", "description": "", "risk_rank": "1"},
        headers=HTMX,
    )
    # Then the row partial with the new value comes back, marked saved, with the message out of band
    assert response.status_code == 200
    content = response.content.decode()
    assert "<html" not in content
    assert 'id="variation-cached_answer"' in content
    assert "<code>cached_answer_v2</code>" in content
    assert "Saved" in content
    assert 'hx-swap-oob="true"' in content and "Variation “cached_answer” saved." in content
    # and the value is stored and audited
    variation.refresh_from_db()
    assert variation.value == "cached_answer_v2"
    events = _events_since(mark)
    assert [(e.action, e.actor) for e in events] == [(AuditAction.VARIATION_UPDATED, owner)]
    assert events[0].before == {"value": old_value}
    assert events[0].after == {"value": "cached_answer_v2"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "error"),
    [
        ('{"profile": "citation_first_v4"', "Not valid JSON:"),
        ('{"profile": "citation_first_v4"}', "Value does not match the flag's JSON Schema"),
        ("[1, 2]", "Value does not match the flag's JSON Schema"),
    ],
    ids=["malformed-json", "schema-violation", "wrong-shape"],
)
def test_variation_edit__htmx_post_invalid__answers_422_with_error_and_saves_nothing(
    client: Any, login: Callable[[str], Any], value: str, error: str
) -> None:
    # Given an editor and a variation of the schema-checked JSON flag that production does not
    # serve (a served one's value goes through a change request: tests/rollouts)
    login("owner")
    before = _catalog_state()
    # When the inline form is posted with a bad value
    response = client.post(
        _url("variation_edit", flag_key=PROFILE, variation_key="fallback_human_review"),
        {"name": "Fallback: human review", "value": value, "description": "", "risk_rank": "0"},
        headers=HTMX,
    )
    # Then the inline form comes back as 422 with the error beside the value, and nothing changed
    assert response.status_code == 422
    assert "<html" not in response.content.decode()
    assert_field_error(response, "value", error)
    assert _catalog_state() == before


@pytest.mark.django_db
def test_variation_create__valid__adds_variation_and_audits(client: Any, login: Callable[[str], Any]) -> None:
    # Given an editor
    owner = login("owner")
    mark = _audit_mark()
    # When a variation is added to the string flag
    response = client.post(_url("variation_create", flag_key=TOOL_MODE),
                           {"key": "admin_only", "name": "Admin only", "value": "admin_only", "risk_rank": "2"})
    # Then it exists, and the creation is audited
    assert response.status_code == 302
    variation = Variation.objects.get(flag__key=TOOL_MODE, key="admin_only")
    assert variation.value == "admin_only" and variation.risk_rank == 2
    events = _events_since(mark)
    assert [(e.action, e.actor, e.flag_id) for e in events] == [
        (AuditAction.VARIATION_CREATED, owner, variation.flag_id)
    ]
    assert events[0].after["key"] == "admin_only"


@pytest.mark.django_db
def test_variation_create__boolean_flag_value_yes__shows_error_beside_value_and_saves_nothing(
    client: Any, login: Callable[[str], Any], demo: Project
) -> None:
    # Given a boolean flag (variations off/on) and an editor
    _boolean_flag(demo, "summary_enabled")
    login("owner")
    before = _catalog_state()
    # When a variation is posted with the string "yes" as its value
    response = client.post(_url("variation_create", flag_key="summary_enabled"),
                           {"key": "maybe", "name": "", "value": "yes", "risk_rank": "0"})
    # Then it is refused beside the value, and nothing is saved
    assert response.status_code == 422
    assert_field_error(response, "value", "A boolean flag needs true or false, not “yes”.")
    assert _catalog_state() == before


@pytest.mark.django_db
def test_variation_delete__used_by_targeting__is_refused_naming_the_usage(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given "approval_required" is served by the development default rule and by rules in staging
    # and production (it is not the fallback)
    login("owner")
    before = _catalog_state()
    # When an editor deletes it
    response = client.post(_url("variation_delete", flag_key=TOOL_MODE, variation_key="approval_required"),
                           follow=True)
    # Then the flag page says it is in use and where
    assert response.redirect_chain == [(_url("flag_detail", flag_key=TOOL_MODE), 302)]
    messages = _messages(response)
    assert len(messages) == 1
    assert "“approval_required” is in use and cannot be deleted" in messages[0]
    assert "Development: the default rule" in messages[0]
    assert "Staging: a rule" in messages[0]
    assert "Production: a rule" in messages[0]
    assert "fallback" not in messages[0]
    # and the variation still exists, nothing audited
    assert Variation.objects.filter(flag__key=TOOL_MODE, key="approval_required").exists()
    assert _catalog_state() == before


@pytest.mark.django_db
def test_variation_delete__fallback_not_otherwise_used__is_refused_naming_the_fallback(
    client: Any, login: Callable[[str], Any], demo: Project
) -> None:
    # Given a flag whose fallback "safe" is served by no targeting any more
    flag = _string_flag(demo, "fallback_only")
    for targeting in flag.targetings.all():
        services.targeting_update(targeting=targeting, actor=TEST_ACTOR, default_serve={"variation": "alt"})
    login("owner")
    before = _catalog_state()
    # When an editor deletes the fallback through htmx
    response = client.post(_url("variation_delete", flag_key="fallback_only", variation_key="safe"), headers=HTMX)
    # Then htmx is sent back to the flag page, where the refusal names the fallback
    assert response.status_code == 200
    assert response["HX-Redirect"] == _url("flag_detail", flag_key="fallback_only") + "#variations"
    page = client.get(_url("flag_detail", flag_key="fallback_only"))
    messages = _messages(page)
    assert len(messages) == 1
    assert "“safe” is in use and cannot be deleted (it is the flag's fallback)" in messages[0]
    # and nothing changed
    assert Variation.objects.filter(flag=flag, key="safe").exists()
    assert _catalog_state() == before


@pytest.mark.django_db
def test_variation_delete__unused__deletes_and_audits(client: Any, login: Callable[[str], Any]) -> None:
    # Given "write" is neither the fallback nor served anywhere
    owner = login("owner")
    flag = _flag(TOOL_MODE)
    mark = _audit_mark()
    # When an editor deletes it
    response = client.post(_url("variation_delete", flag_key=TOOL_MODE, variation_key="write"), follow=True)
    # Then it is gone, the page confirms, and the deletion is audited
    assert response.redirect_chain == [(_url("flag_detail", flag_key=TOOL_MODE), 302)]
    assert _messages(response) == ["Variation “write” deleted."]
    assert not Variation.objects.filter(flag=flag, key="write").exists()
    events = _events_since(mark)
    assert [(e.action, e.actor, e.flag_id) for e in events] == [(AuditAction.VARIATION_DELETED, owner, flag.pk)]
    assert events[0].before["key"] == "write"


# --- targeting -------------------------------------------------------------------------------

PLAN_RULE = {"id": "pro", "description": "Pro plan", "serve": {"variation": "write"},
             "clauses": [{"attribute": "plan", "op": "in", "values": ["pro"]}]}


@pytest.mark.django_db
def test_targeting_edit__valid_rules__saves_and_bumps_targeting_and_environment_versions(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor and the tool-mode flag's development targeting
    owner = login("owner")
    targeting = _targeting(TOOL_MODE, "development")
    old_version = targeting.version
    env_versions = dict(Environment.objects.filter(project__key=PROJECT).values_list("key", "version"))
    mark = _audit_mark()
    # When new rules and a new default rule are saved
    response = client.post(
        _url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"),
        _targeting_data(targeting, rules=[PLAN_RULE], default_variation="read_only"),
    )
    # Then the browser returns to the development card
    assert response.status_code == 302
    assert response.url == _url("flag_detail", flag_key=TOOL_MODE) + "#env-development"
    # and the targeting holds them, one version up
    targeting.refresh_from_db()
    assert targeting.rules == [PLAN_RULE]
    assert targeting.default_serve == {"variation": "read_only"}
    assert targeting.version == old_version + 1
    assert targeting.updated_by == owner
    # and only the development environment's version rose
    after = dict(Environment.objects.filter(project__key=PROJECT).values_list("key", "version"))
    assert after == {**env_versions, "development": env_versions["development"] + 1}
    # and the change is audited against the development environment
    events = _events_since(mark)
    assert [(e.action, e.actor) for e in events] == [(AuditAction.TARGETING_UPDATED, owner)]
    event = events[0]
    assert event.environment_id == targeting.environment_id and event.flag_id == targeting.flag_id
    assert event.before == {"rules": [], "default_serve": {"variation": "approval_required"}, "version": old_version}
    assert event.after == {"rules": [PLAN_RULE], "default_serve": {"variation": "read_only"},
                           "version": old_version + 1}


@pytest.mark.django_db
def test_targeting_edit__split_adding_up_to_100__saves_weights_in_thousandths(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor
    login("owner")
    targeting = _targeting(TOOL_MODE, "development")
    mark = _audit_mark()
    # When the default rule becomes a 97.5 / 2.5 split
    response = client.post(
        _url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"),
        _targeting_data(targeting, default_variation=TargetingForm.SPLIT, split_read_only="97.5", split_write="2.5"),
    )
    # Then the split is stored in thousandths of a percent
    assert response.status_code == 302
    targeting.refresh_from_db()
    assert targeting.default_serve == {"split": [{"variation": "read_only", "weight": 97500},
                                                 {"variation": "write", "weight": 2500}]}
    assert [e.action for e in _events_since(mark)] == [AuditAction.TARGETING_UPDATED]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field", "error"),
    [
        ({"default_variation": TargetingForm.SPLIT, "split_read_only": "60", "split_write": "30"},
         "default_variation", "The split adds up to 90 %, not 100 %."),
        ({"rules": [{"clauses": [{"attribute": "plan", "op": "resembles", "values": ["pro"]}],
                     "serve": {"variation": "write"}}]},
         "rules", "rules[0].clauses[0].op: unknown operator 'resembles'"),
        ({"rules": [{"clauses": [{"attribute": "email", "op": "matches", "values": ["(unclosed"]}],
                     "serve": {"variation": "write"}}]},
         "rules", "rules[0].clauses[0].values[0]: regular expression does not compile"),
        ({"rules": [{"clauses": [{"op": "in_segment", "values": ["no_such_segment"]}],
                     "serve": {"variation": "write"}}]},
         "rules", "unknown segment(s): no_such_segment"),
        ({"rules": "[{"}, "rules", "Not valid JSON:"),
        ({"targets_read_only": "acct-7", "targets_write": "acct-7"},
         "targets_write", "'acct-7' is already targeted to 'read_only'"),
    ],
    ids=["split-not-100", "unknown-operator", "bad-regex", "unknown-segment", "malformed-json", "key-in-two-targets"],
)
def test_targeting_edit__invalid_input__shows_error_beside_field_and_saves_nothing(
    client: Any, login: Callable[[str], Any], overrides: dict[str, Any], field: str, error: str
) -> None:
    # Given an editor and the development targeting
    login("owner")
    targeting = _targeting(TOOL_MODE, "development")
    before = _catalog_state()
    # When the targeting form is posted with one bad part
    response = client.post(_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"),
                           _targeting_data(targeting, **overrides))
    # Then the form comes back (422) with the error beside that field, and nothing changed
    assert response.status_code == 422
    assert_field_error(response, field, error)
    assert _catalog_state() == before


@pytest.mark.django_db
def test_targeting_edit__stale_version__is_refused_with_message_and_saves_nothing(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor opened the development targeting form
    owner = login("owner")
    targeting = _targeting(TOOL_MODE, "development")
    stale_form = _targeting_data(targeting, rules=[PLAN_RULE])
    # and someone else turned it off in the meantime
    services.targeting_update(targeting=targeting, actor=TEST_ACTOR, enabled=False)
    targeting.refresh_from_db()
    current_version = targeting.version
    mark = _audit_mark()
    # When the editor saves the form opened on the old version
    response = client.post(_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"), stale_form)
    # Then the save is refused with a message naming the conflict
    assert response.status_code == 422
    assert any("This targeting changed since you opened it" in e
               for e in response.context["form"].non_field_errors())
    assert "This targeting changed since you opened it" in response.content.decode()
    # and the other change stands
    targeting.refresh_from_db()
    assert targeting.version == current_version
    assert targeting.enabled is False
    assert targeting.rules == []
    assert _events_since(mark) == []
    assert not AuditEvent.objects.filter(actor=owner).exclude(action__startswith="auth.").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post"])
def test_targeting_edit__governed_production__answers_403_read_only_and_changes_nothing(
    client: Any, login: Callable[[str], Any], method: str
) -> None:
    # Given an editor (who may edit development) and the governed production targeting
    login("owner")
    targeting = _targeting(TOOL_MODE, "production")
    before = _catalog_state()
    url = _url("targeting_edit", flag_key=TOOL_MODE, environment_key="production")
    # When the editor opens or posts the production targeting form
    if method == "get":
        response = client.get(url)
    else:
        response = client.post(url, _targeting_data(targeting, enabled=False, rules=[]))
    # Then it is refused as governed: changes there are proposed instead
    assert response.status_code == 403
    assert "Production is a governed environment: propose the change instead" in response.content.decode()
    assert _catalog_state() == before


@pytest.mark.django_db
def test_targeting_toggle__governed_production_via_htmx__answers_403_into_messages_and_changes_nothing(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor and production, where the tool-mode flag is on
    login("owner")
    targeting = _targeting(TOOL_MODE, "production")
    assert targeting.enabled is True
    before = _catalog_state()
    # When the editor tries to turn it off through htmx
    response = client.post(_url("targeting_toggle", flag_key=TOOL_MODE, environment_key="production"),
                           {"version": str(targeting.version)}, headers=HTMX)
    # Then it is refused with the governed message, swapped into the message area
    assert response.status_code == 403
    assert response["HX-Retarget"] == "#messages"
    assert "propose the change instead" in response.content.decode()
    assert "<html" not in response.content.decode()
    targeting.refresh_from_db()
    assert targeting.enabled is True
    assert _catalog_state() == before


@pytest.mark.django_db
def test_targeting_toggle__development_via_htmx__flips_enabled_and_audits(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given the incident flag is on in development
    owner = login("owner")
    targeting = _targeting(INCIDENT, "development")
    assert targeting.enabled is True
    old_version = targeting.version
    env_version = targeting.environment.version
    mark = _audit_mark()
    # When an editor turns it off through htmx
    response = client.post(_url("targeting_toggle", flag_key=INCIDENT, environment_key="development"),
                           {"version": str(old_version)}, headers=HTMX)
    # Then the card comes back showing Off, with the confirmation out of band
    assert response.status_code == 200
    content = response.content.decode()
    assert "<html" not in content
    assert 'data-testid="targeting-development"' in content
    assert '<span class="badge">Off</span>' in content
    assert "Turn on" in content
    assert f"“{INCIDENT}” is now off in Development." in content
    # and it is off in the database, one version up, with the environment bumped
    targeting.refresh_from_db()
    assert targeting.enabled is False
    assert targeting.version == old_version + 1
    assert Environment.objects.get(pk=targeting.environment_id).version == env_version + 1
    # and the toggle is audited
    events = _events_since(mark)
    assert [(e.action, e.actor, e.environment_id) for e in events] == [
        (AuditAction.TARGETING_UPDATED, owner, targeting.environment_id)
    ]
    assert events[0].before == {"enabled": True, "version": old_version}
    assert events[0].after == {"enabled": False, "version": old_version + 1}

    # When it is toggled again with the new version
    client.post(_url("targeting_toggle", flag_key=INCIDENT, environment_key="development"),
                {"version": str(old_version + 1)}, headers=HTMX)
    # Then it is back on, and that too is audited
    targeting.refresh_from_db()
    assert targeting.enabled is True
    events = _events_since(events[0].id)
    assert [(e.action, e.actor) for e in events] == [(AuditAction.TARGETING_UPDATED, owner)]
    assert events[0].after == {"enabled": True, "version": old_version + 2}


@pytest.mark.django_db
def test_targeting_toggle__development_without_htmx__redirects_to_the_card_and_flips(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given the tool-mode flag is on in development and the browser runs no JavaScript
    owner = login("owner")
    targeting = _targeting(TOOL_MODE, "development")
    assert targeting.enabled is True
    mark = _audit_mark()
    # When the toggle form is posted
    response = client.post(_url("targeting_toggle", flag_key=TOOL_MODE, environment_key="development"),
                           {"version": str(targeting.version)})
    # Then the browser goes back to the development card, the flag is off there, and it is audited
    assert response.status_code == 302
    assert response.url == _url("flag_detail", flag_key=TOOL_MODE) + "#env-development"
    targeting.refresh_from_db()
    assert targeting.enabled is False
    assert [(e.action, e.actor) for e in _events_since(mark)] == [(AuditAction.TARGETING_UPDATED, owner)]


@pytest.mark.django_db
def test_targeting_toggle__stale_version__is_refused_and_changes_nothing(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given the card was rendered at one version and the targeting changed since
    login("owner")
    targeting = _targeting(INCIDENT, "development")
    shown_version = targeting.version
    services.targeting_update(targeting=targeting, actor=TEST_ACTOR, assignment_unit="userId")
    before = _catalog_state()
    # When the stale card's toggle is clicked
    response = client.post(_url("targeting_toggle", flag_key=INCIDENT, environment_key="development"),
                           {"version": str(shown_version)}, headers=HTMX)
    # Then the refusal is shown and the targeting is untouched
    assert response.status_code == 200
    assert "This targeting changed since you opened it" in response.content.decode()
    targeting.refresh_from_db()
    assert targeting.enabled is True
    assert _catalog_state() == before


# --- segments --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_segment_create__valid__creates_segment_and_audits(
    client: Any, login: Callable[[str], Any], demo: Project
) -> None:
    # Given an editor
    owner = login("owner")
    mark = _audit_mark()
    rules = [{"clauses": [{"attribute": "plan", "op": "equals", "values": ["enterprise"]}]}]
    # When a segment is created with keys and rules
    response = client.post(_url("rollouts:segment_create"), {
        "key": "enterprise_accounts", "name": "Enterprise accounts", "description": "Big customers.",
        "included_keys": "acct-1, acct-2\nacct-3", "excluded_keys": "acct-9", "rules": json.dumps(rules),
    })
    # Then the browser returns to the segment list and the segment exists as typed
    assert response.status_code == 302
    assert response.url == _url("segment_list")
    segment = Segment.objects.get(project=demo, key="enterprise_accounts")
    assert segment.name == "Enterprise accounts"
    assert segment.included_keys == ["acct-1", "acct-2", "acct-3"]
    assert segment.excluded_keys == ["acct-9"]
    assert segment.rules == rules
    # and it is audited
    events = _events_since(mark)
    assert [(e.action, e.actor, e.project_id) for e in events] == [(AuditAction.SEGMENT_CREATED, owner, demo.pk)]
    assert events[0].after["key"] == "enterprise_accounts"


@pytest.mark.django_db
def test_segment_edit__valid__saves_bumps_version_and_audits(client: Any, login: Callable[[str], Any]) -> None:
    # Given an editor and the beta segment
    owner = login("owner")
    segment = services.segment_create(project=Project.objects.get(key=PROJECT), key="qa_accounts", name="QA",
                                      included_keys=["acct-qa-1"], excluded_keys=["acct-beta-999"],
                                      rules=[{"clauses": [{"attribute": "plan", "op": "in", "values": ["qa"]}]}],
                                      actor=TEST_ACTOR)
    old_name, old_excluded, old_version = segment.name, segment.excluded_keys, segment.version
    mark = _audit_mark()
    # When its name and excluded keys are changed, the rest submitted as shown
    response = client.post(_url("rollouts:segment_edit", segment_key="qa_accounts"), {
        "name": "Beta programme accounts", "description": segment.description,
        "included_keys": "\n".join(segment.included_keys), "excluded_keys": "acct-beta-999\nacct-beta-998",
        "rules": json.dumps(segment.rules), "version": segment.version,
    })
    # Then it is saved one version up
    assert response.status_code == 302
    segment.refresh_from_db()
    assert segment.name == "Beta programme accounts"
    assert segment.excluded_keys == ["acct-beta-999", "acct-beta-998"]
    assert segment.version == old_version + 1
    # and the audit row holds exactly the changes
    events = _events_since(mark)
    assert [(e.action, e.actor) for e in events] == [(AuditAction.SEGMENT_UPDATED, owner)]
    assert events[0].before == {"name": old_name, "excluded_keys": old_excluded}
    assert events[0].after == {"name": "Beta programme accounts", "excluded_keys": ["acct-beta-999", "acct-beta-998"]}


@pytest.mark.django_db
def test_segment_edit__stale_version__refused_and_newer_change_kept(client: Any, login: Callable[[str], Any]) -> None:
    # Given an editor who opened the beta segment at its current version, and someone saving first
    login("owner")
    segment = services.segment_create(project=Project.objects.get(key=PROJECT), key="qa_accounts", name="QA",
                                      included_keys=["acct-qa-1"], excluded_keys=["acct-beta-999"],
                                      rules=[{"clauses": [{"attribute": "plan", "op": "in", "values": ["qa"]}]}],
                                      actor=TEST_ACTOR)
    opened_version = segment.version
    services.segment_update(segment=segment, actor=TEST_ACTOR, name="Renamed meanwhile")
    mark = _audit_mark()
    # When the editor submits the form they opened
    response = client.post(_url("rollouts:segment_edit", segment_key="qa_accounts"), {
        "name": "My rename", "description": "", "included_keys": "", "excluded_keys": "", "rules": "",
        "version": opened_version,
    })
    # Then it is refused with the reason, and the other change stands
    assert response.status_code == 422
    assert "changed this segment since you opened it" in response.content.decode()
    segment.refresh_from_db()
    assert segment.name == "Renamed meanwhile"
    assert _events_since(mark) == []


@pytest.mark.django_db
def test_segment_delete__unused__deletes_and_audits(client: Any, login: Callable[[str], Any], demo: Project) -> None:
    # Given a segment nothing refers to
    services.segment_create(project=demo, key="unused_segment", name="Unused", actor=TEST_ACTOR)
    owner = login("owner")
    mark = _audit_mark()
    # When an editor deletes it
    response = client.post(_url("segment_delete", segment_key="unused_segment"), follow=True)
    # Then it is gone, the list confirms, and the deletion is audited
    assert response.redirect_chain == [(_url("segment_list"), 302)]
    assert _messages(response) == ["Segment “unused_segment” deleted."]
    assert not Segment.objects.filter(project=demo, key="unused_segment").exists()
    events = _events_since(mark)
    assert [(e.action, e.actor) for e in events] == [(AuditAction.SEGMENT_DELETED, owner)]
    assert events[0].before["key"] == "unused_segment"


@pytest.mark.django_db
def test_segment_delete__used_by_targeting__is_refused_naming_the_usage(
    client: Any, login: Callable[[str], Any], demo: Project
) -> None:
    # Given a segment referenced by development targeting only
    services.segment_create(project=demo, key="dev_only", name="Dev only", actor=TEST_ACTOR)
    services.targeting_update(targeting=_targeting(TOOL_MODE, "development"), actor=TEST_ACTOR, rules=[
        {"clauses": [{"op": "in_segment", "values": ["dev_only"]}], "serve": {"variation": "write"}}])
    login("owner")
    before = _catalog_state()
    # When an editor deletes it
    response = client.post(_url("segment_delete", segment_key="dev_only"), follow=True)
    # Then the list says where it is used
    messages = _messages(response)
    assert len(messages) == 1
    assert "Segment “dev_only” is used by" in messages[0] and f"{TOOL_MODE} in Development" in messages[0]
    # and the segment still exists
    assert Segment.objects.filter(project__key=PROJECT, key="dev_only").exists()
    assert _catalog_state() == before


@pytest.mark.django_db
@pytest.mark.parametrize("segment_key", ["internal_users", "beta_accounts"])
def test_segment_used_by_production__delete__refused_with_the_reason(
    client: Any, login: Callable[[str], Any], segment_key: str
) -> None:
    # Given a segment that decides who production serves (editing it is a change request:
    # tests/flags/test_segment_change_requests.py)
    login("owner")
    before = _catalog_state()
    # When an editor forges a delete
    delete = client.post(_url("segment_delete", segment_key=segment_key))
    # Then it is refused with the reason, and nothing changed
    assert delete.status_code == 403 and "Production" in delete.content.decode()
    assert _catalog_state() == before


@pytest.mark.django_db
def test_segment_create__rule_referring_to_itself__is_refused_beside_rules(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor
    login("owner")
    before = _catalog_state()
    # When a segment's rule names the segment itself
    response = client.post(_url("rollouts:segment_create"), {
        "key": "loop_a", "name": "Loop A",
        "rules": json.dumps([{"clauses": [{"op": "in_segment", "values": ["loop_a"]}]}]),
    })
    # Then it is refused beside the rules, and nothing is saved
    assert response.status_code == 422
    assert_field_error(response, "rules", "A segment cannot refer to itself.")
    assert _catalog_state() == before


@pytest.mark.django_db
def test_segment_edit__cycle_through_another_segment__is_refused_beside_rules(
    client: Any, login: Callable[[str], Any], demo: Project
) -> None:
    # Given segment b refers to segment a
    services.segment_create(project=demo, key="seg_a", name="A", actor=TEST_ACTOR)
    services.segment_create(project=demo, key="seg_b", name="B", actor=TEST_ACTOR,
                            rules=[{"clauses": [{"op": "in_segment", "values": ["seg_a"]}]}])
    login("owner")
    before = _catalog_state()
    # When a is edited to refer to b (a → b → a)
    response = client.post(_url("rollouts:segment_edit", segment_key="seg_a"), {
        "name": "A", "rules": json.dumps([{"clauses": [{"op": "in_segment", "values": ["seg_b"]}]}]), "version": 1,
    })
    # Then the cycle is refused beside the rules, and a is unchanged
    assert response.status_code == 422
    assert_field_error(response, "rules", "These rules make the segment refer to itself through other segments.")
    assert Segment.objects.get(project=demo, key="seg_a").rules == []
    assert _catalog_state() == before


# --- permissions -----------------------------------------------------------------------------


def _auditor_posts() -> list[Any]:
    """(url, data) builders for every catalog write the auditor must be refused."""
    return [
        pytest.param(lambda: (_url("flag_create"), _flag_create_data()), id="flag-create"),
        pytest.param(lambda: (_url("flag_edit", flag_key=TOOL_MODE), _flag_edit_data(_flag(TOOL_MODE), name="X")),
                     id="flag-edit"),
        pytest.param(lambda: (_url("variation_edit", flag_key=TOOL_MODE, variation_key="write"),
                              {"name": "Write", "value": "write_all", "risk_rank": "4"}), id="variation-edit"),
        pytest.param(lambda: (_url("variation_create", flag_key=TOOL_MODE),
                              {"key": "extra", "value": "extra", "risk_rank": "0"}), id="variation-create"),
        pytest.param(lambda: (_url("variation_delete", flag_key=TOOL_MODE, variation_key="write"), {}),
                     id="variation-delete"),
        pytest.param(lambda: (_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"),
                              _targeting_data(_targeting(TOOL_MODE, "development"), enabled=False)),
                     id="targeting-edit-development"),
        pytest.param(lambda: (_url("targeting_toggle", flag_key=TOOL_MODE, environment_key="development"), {}),
                     id="targeting-toggle-development"),
        pytest.param(lambda: (_url("rollouts:segment_create"), {"key": "new_segment", "name": "New"}), id="segment-create"),
        pytest.param(lambda: (_url("rollouts:segment_edit", segment_key="beta_accounts"), {"name": "Renamed"}),
                     id="segment-edit"),
        pytest.param(lambda: (_url("segment_delete", segment_key="beta_accounts"), {}), id="segment-delete"),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("request_builder", _auditor_posts())
def test_catalog_write__auditor__answers_403_and_changes_nothing(
    client: Any, login: Callable[[str], Any], request_builder: Callable[[], tuple[str, dict]]
) -> None:
    # Given the auditor, a read-only role in the project
    login("auditor")
    url, data = request_builder()
    before = _catalog_state()
    # When the auditor posts a change
    response = client.post(url, data)
    # Then it is refused with the "not allowed" page and nothing changed
    assert response.status_code == 403
    assert "Not allowed" in response.content.decode()
    assert _catalog_state() == before


@pytest.mark.django_db
@pytest.mark.parametrize("request_builder", _auditor_posts())
def test_catalog_write__auditor_via_htmx__answers_403_retargeted_to_messages(
    client: Any, login: Callable[[str], Any], request_builder: Callable[[], tuple[str, dict]]
) -> None:
    # Given the auditor
    login("auditor")
    url, data = request_builder()
    before = _catalog_state()
    # When the auditor posts a change through htmx
    response = client.post(url, data, headers=HTMX)
    # Then the refusal is a fragment swapped into the message area
    assert response.status_code == 403
    assert response["HX-Retarget"] == "#messages"
    assert response["HX-Reswap"] == "innerHTML"
    content = response.content.decode()
    assert "<html" not in content
    assert 'class="message denied"' in content
    assert _catalog_state() == before


@pytest.mark.django_db
@pytest.mark.parametrize("username", ["auditor", "pm", "operator"])
def test_flag_create__role_without_editing_rights__answers_403(
    client: Any, login: Callable[[str], Any], username: str
) -> None:
    # Given a member who is neither editor nor admin
    login(username)
    before = _catalog_state()
    # When they open the form or post a flag
    opened = client.get(_url("flag_create"))
    posted = client.post(_url("flag_create"), _flag_create_data())
    # Then both are refused, and nothing is created
    assert opened.status_code == 403
    assert posted.status_code == 403
    assert "flag owner or editor role" in posted.content.decode()
    assert _catalog_state() == before


@pytest.mark.django_db
def test_flag_edit__owner_user_without_editor_role__may_edit_own_flag(
    client: Any, login: Callable[[str], Any], demo: Project, django_user_model: Any
) -> None:
    # Given the pm (approver, viewer) is the named owner of one flag
    pm = django_user_model.objects.get(username="pm")
    _string_flag(demo, "pm_owned_rollout", owner_user=pm)
    login("pm")
    mark = _audit_mark()
    # When the pm edits that flag, and tries to edit another
    own = client.post(_url("flag_edit", flag_key="pm_owned_rollout"),
                      _flag_edit_data(_flag("pm_owned_rollout"), name="Renamed by pm"))
    other = client.post(_url("flag_edit", flag_key=TOOL_MODE), _flag_edit_data(_flag(TOOL_MODE), name="Nope"))
    # Then only their own flag may be changed
    assert own.status_code == 302
    assert _flag("pm_owned_rollout").name == "Renamed by pm"
    assert other.status_code == 403
    assert _flag(TOOL_MODE).name != "Nope"
    assert [(e.action, e.actor) for e in _events_since(mark)] == [(AuditAction.FLAG_UPDATED, pm)]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "url_builder"),
    [
        ("get", lambda other: _url("flag_detail", flag_key="secret_rollout")),
        ("post", lambda other: _url("flag_edit", flag_key="secret_rollout")),
        ("get", lambda other: _url("variation_edit", flag_key="secret_rollout", variation_key="safe")),
        ("post", lambda other: _url("targeting_toggle", flag_key="secret_rollout", environment_key="development")),
        ("get", lambda other: _url("rollouts:segment_edit", segment_key="secret_segment")),
        ("post", lambda other: _url("segment_delete", segment_key="secret_segment")),
        ("get", lambda other: _url("flag_detail", project_key=other.key, flag_key="secret_rollout")),
        ("post", lambda other: _url("flag_create", project_key=other.key)),
        ("get", lambda other: _url("segment_list", project_key=other.key)),
        # a variation key of another flag of the same project
        ("get", lambda other: _url("variation_edit", flag_key=TOOL_MODE, variation_key="baseline_v3")),
    ],
    ids=["flag-detail-via-own-project", "flag-edit-via-own-project", "variation-via-own-project",
         "toggle-via-own-project", "segment-via-own-project", "segment-delete-via-own-project",
         "flag-detail-in-other-project", "flag-create-in-other-project", "segments-of-other-project",
         "variation-of-another-flag"],
)
def test_object_of_another_project__member_of_demo_only__answers_404(
    client: Any, login: Callable[[str], Any], other_project: Project, method: str,
    url_builder: Callable[[Project], str],
) -> None:
    # Given the admin (editor and project admin of the demo project, site superuser) holds no role
    # in the other project, whose flag and segment keys exist nowhere else
    login("admin")
    before = _catalog_state()
    # When the admin reaches for those objects, through either project's URLs
    url = url_builder(other_project)
    response = client.get(url) if method == "get" else client.post(url, {"name": "Taken over"})
    # Then they do not exist for the admin, and nothing changed
    assert response.status_code == 404
    assert _catalog_state() == before


@pytest.mark.django_db
def test_flag_detail__member_granted_role__can_open_other_project(
    client: Any, login: Callable[[str], Any], other_project: Project
) -> None:
    # Given the owner is granted the viewer role in the other project
    owner = login("owner")
    services.membership_grant(project=other_project, user=owner, role=Role.VIEWER, actor=TEST_ACTOR)
    # When the owner opens its flag
    response = client.get(_url("flag_detail", project_key=other_project.key, flag_key="secret_rollout"))
    # Then the flag is shown (membership, not guessing, is what opens it)
    assert response.status_code == 200
    assert response.context["flag"].project == other_project
