"""Variations on a flag's page: the inline edit form (htmx), adding one, deleting one that nothing
serves; refusals beside the value (pathological JSON included) and deletes refused with where
the variation is in use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from audit.constants import AuditAction
from flags import services
from flags.models import Flag, Project, Variation
from tests.factories import TEST_ACTOR
from tests.flags.support import (
    HTMX,
    INCIDENT,
    PROFILE,
    TOOL_MODE,
    assert_form_refused,
    audit_events_since,
    audit_mark,
    boolean_flag,
    catalog_state,
    console_url,
    context_messages,
    demo_flag,
    string_flag,
)


@pytest.mark.django_db
def test_variation_edit__htmx_get__returns_the_edit_form_partial(client: Any, login: Callable[[str], Any]) -> None:
    # Given an editor
    login("owner")
    # When the Edit button fetches the inline form
    response = client.get(console_url("variation_edit", flag_key=INCIDENT, variation_key="cached_answer"), headers=HTMX)
    # Then only the inline form comes back, prefilled with the variation
    assert response.status_code == 200
    content = response.content.decode()
    assert "<html" not in content
    assert content.strip().startswith('<form class="variation-edit stack" id="variation-cached_answer"')
    assert 'value="cached_answer"' in content
    assert console_url("variation_delete", flag_key=INCIDENT, variation_key="cached_answer") in content


@pytest.mark.django_db
def test_variation_edit__htmx_post_valid__returns_row_partial_with_new_value_and_audits(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor and the "cached_answer" variation of the incident flag
    owner = login("owner")
    variation = Variation.objects.get(flag__key=INCIDENT, key="cached_answer")
    old_value = variation.value
    mark = audit_mark()
    # When the inline form is posted with a new value
    response = client.post(
        console_url("variation_edit", flag_key=INCIDENT, variation_key="cached_answer"),
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
    events = audit_events_since(mark)
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
    before = catalog_state()
    # When the inline form is posted with a bad value
    response = client.post(
        console_url("variation_edit", flag_key=PROFILE, variation_key="fallback_human_review"),
        {"name": "Fallback: human review", "value": value, "description": "", "risk_rank": "0"},
        headers=HTMX,
    )
    # Then the inline form comes back as 422 with the error beside the value, and nothing changed
    assert "<html" not in response.content.decode()
    assert_form_refused(response, "value", error, catalog_before=before)


@pytest.mark.django_db
@pytest.mark.parametrize("text", ['{"prompt": "\\ud800", "temperature": 0.2}', '{"prompt": "a\\u0000b", "temperature": 0.2}',
                                  "[" * 50_000, "[" + "1" * 5000 + "]"])
def test_variation_value__pathological_json__422_not_500(client, demo, login, text: str) -> None:
    login("owner")
    response = client.post(f"/p/{demo.key}/flags/{PROFILE}/variations/new/", {"key": "odd", "value": text,
                                                                            "risk_rank": "0"})
    assert response.status_code == 422
    assert not Flag.objects.get(project=demo, key=PROFILE).variations.filter(key="odd").exists()


@pytest.mark.django_db
def test_variation_create__valid__adds_variation_and_audits(client: Any, login: Callable[[str], Any]) -> None:
    # Given an editor
    owner = login("owner")
    mark = audit_mark()
    # When a variation is added to the string flag
    response = client.post(console_url("variation_create", flag_key=TOOL_MODE),
                           {"key": "admin_only", "name": "Admin only", "value": "admin_only", "risk_rank": "2"})
    # Then it exists, and the creation is audited
    assert response.status_code == 302
    variation = Variation.objects.get(flag__key=TOOL_MODE, key="admin_only")
    assert variation.value == "admin_only" and variation.risk_rank == 2
    events = audit_events_since(mark)
    assert [(e.action, e.actor, e.flag_id) for e in events] == [
        (AuditAction.VARIATION_CREATED, owner, variation.flag_id)
    ]
    assert events[0].after["key"] == "admin_only"


@pytest.mark.django_db
def test_variation_create__boolean_flag_value_yes__shows_error_beside_value_and_saves_nothing(
    client: Any, login: Callable[[str], Any], demo: Project
) -> None:
    # Given a boolean flag (variations off/on) and an editor
    boolean_flag(demo, "summary_enabled")
    login("owner")
    before = catalog_state()
    # When a variation is posted with the string "yes" as its value
    response = client.post(console_url("variation_create", flag_key="summary_enabled"),
                           {"key": "maybe", "name": "", "value": "yes", "risk_rank": "0"})
    # Then it is refused beside the value, and nothing is saved
    assert_form_refused(response, "value", "A boolean flag needs true or false, not “yes”.", catalog_before=before)


@pytest.mark.django_db
def test_variation_delete__used_by_targeting__is_refused_naming_the_usage(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given "approval_required" is served by the development default rule and by rules in staging
    # and production (it is not the fallback)
    login("owner")
    before = catalog_state()
    # When an editor deletes it
    response = client.post(console_url("variation_delete", flag_key=TOOL_MODE, variation_key="approval_required"),
                           follow=True)
    # Then the flag page says it is in use and where
    assert response.redirect_chain == [(console_url("flag_detail", flag_key=TOOL_MODE), 302)]
    messages = context_messages(response)
    assert len(messages) == 1
    assert "“approval_required” is in use and cannot be deleted" in messages[0]
    assert "Development: the default rule" in messages[0]
    assert "Staging: a rule" in messages[0]
    assert "Production: a rule" in messages[0]
    assert "fallback" not in messages[0]
    # and the variation still exists, nothing audited
    assert Variation.objects.filter(flag__key=TOOL_MODE, key="approval_required").exists()
    assert catalog_state() == before


@pytest.mark.django_db
def test_variation_delete__fallback_not_otherwise_used__is_refused_naming_the_fallback(
    client: Any, login: Callable[[str], Any], demo: Project
) -> None:
    # Given a flag whose fallback "safe" is served by no targeting any more
    flag = string_flag(demo, "fallback_only")
    for targeting in flag.targetings.all():
        services.targeting_update(targeting=targeting, actor=TEST_ACTOR, default_serve={"variation": "alt"})
    login("owner")
    before = catalog_state()
    # When an editor deletes the fallback through htmx
    response = client.post(console_url("variation_delete", flag_key="fallback_only", variation_key="safe"), headers=HTMX)
    # Then htmx is sent back to the flag page, where the refusal names the fallback
    assert response.status_code == 200
    assert response["HX-Redirect"] == console_url("flag_detail", flag_key="fallback_only") + "#variations"
    page = client.get(console_url("flag_detail", flag_key="fallback_only"))
    messages = context_messages(page)
    assert len(messages) == 1
    assert "“safe” is in use and cannot be deleted (it is the flag's fallback)" in messages[0]
    # and nothing changed
    assert Variation.objects.filter(flag=flag, key="safe").exists()
    assert catalog_state() == before


@pytest.mark.django_db
def test_variation_delete__unused__deletes_and_audits(client: Any, login: Callable[[str], Any]) -> None:
    # Given "write" is neither the fallback nor served anywhere
    owner = login("owner")
    flag = demo_flag(TOOL_MODE)
    mark = audit_mark()
    # When an editor deletes it
    response = client.post(console_url("variation_delete", flag_key=TOOL_MODE, variation_key="write"), follow=True)
    # Then it is gone, the page confirms, and the deletion is audited
    assert response.redirect_chain == [(console_url("flag_detail", flag_key=TOOL_MODE), 302)]
    assert context_messages(response) == ["Variation “write” deleted."]
    assert not Variation.objects.filter(flag=flag, key="write").exists()
    events = audit_events_since(mark)
    assert [(e.action, e.actor, e.flag_id) for e in events] == [(AuditAction.VARIATION_DELETED, owner, flag.pk)]
    assert events[0].before["key"] == "write"

