"""Turning a flag on or off in one environment from its card (htmx or a plain post), audited;
refused in a governed environment and when the card is stale or carries no version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from audit.constants import AuditAction
from flags import services
from flags.models import Environment, Flag
from tests.factories import TEST_ACTOR
from tests.flags.support import (
    HTMX,
    INCIDENT,
    TOOL_MODE,
    audit_events_since,
    audit_mark,
    catalog_state,
    console_url,
    demo_targeting,
)


@pytest.mark.django_db
def test_targeting_toggle__governed_production_via_htmx__answers_403_into_messages_and_changes_nothing(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor and production, where the tool-mode flag is on
    login("owner")
    targeting = demo_targeting(TOOL_MODE, "production")
    assert targeting.enabled is True
    before = catalog_state()
    # When the editor tries to turn it off through htmx
    response = client.post(console_url("targeting_toggle", flag_key=TOOL_MODE, environment_key="production"),
                           {"version": str(targeting.version)}, headers=HTMX)
    # Then it is refused with the governed message, swapped into the message area
    assert response.status_code == 403
    assert response["HX-Retarget"] == "#messages"
    assert "propose the change instead" in response.content.decode()
    assert "<html" not in response.content.decode()
    targeting.refresh_from_db()
    assert targeting.enabled is True
    assert catalog_state() == before


@pytest.mark.django_db
def test_targeting_toggle__development_via_htmx__flips_enabled_and_audits(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given the incident flag is on in development
    owner = login("owner")
    targeting = demo_targeting(INCIDENT, "development")
    assert targeting.enabled is True
    old_version = targeting.version
    env_version = targeting.environment.version
    mark = audit_mark()
    # When an editor turns it off through htmx
    response = client.post(console_url("targeting_toggle", flag_key=INCIDENT, environment_key="development"),
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
    events = audit_events_since(mark)
    assert [(e.action, e.actor, e.environment_id) for e in events] == [
        (AuditAction.TARGETING_UPDATED, owner, targeting.environment_id)
    ]
    assert events[0].before == {"enabled": True, "version": old_version}
    assert events[0].after == {"enabled": False, "version": old_version + 1}

    # When it is toggled again with the new version
    client.post(console_url("targeting_toggle", flag_key=INCIDENT, environment_key="development"),
                {"version": str(old_version + 1)}, headers=HTMX)
    # Then it is back on, and that too is audited
    targeting.refresh_from_db()
    assert targeting.enabled is True
    events = audit_events_since(events[0].id)
    assert [(e.action, e.actor) for e in events] == [(AuditAction.TARGETING_UPDATED, owner)]
    assert events[0].after == {"enabled": True, "version": old_version + 2}


@pytest.mark.django_db
def test_targeting_toggle__development_without_htmx__redirects_to_the_card_and_flips(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given the tool-mode flag is on in development and the browser runs no JavaScript
    owner = login("owner")
    targeting = demo_targeting(TOOL_MODE, "development")
    assert targeting.enabled is True
    mark = audit_mark()
    # When the toggle form is posted
    response = client.post(console_url("targeting_toggle", flag_key=TOOL_MODE, environment_key="development"),
                           {"version": str(targeting.version)})
    # Then the browser goes back to the development card, the flag is off there, and it is audited
    assert response.status_code == 302
    assert response.url == console_url("flag_detail", flag_key=TOOL_MODE) + "#env-development"
    targeting.refresh_from_db()
    assert targeting.enabled is False
    assert [(e.action, e.actor) for e in audit_events_since(mark)] == [(AuditAction.TARGETING_UPDATED, owner)]


@pytest.mark.django_db
def test_targeting_toggle__stale_version__is_refused_and_changes_nothing(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given the card was rendered at one version and the targeting changed since
    login("owner")
    targeting = demo_targeting(INCIDENT, "development")
    shown_version = targeting.version
    services.targeting_update(targeting=targeting, actor=TEST_ACTOR, assignment_unit="userId")
    before = catalog_state()
    # When the stale card's toggle is clicked
    response = client.post(console_url("targeting_toggle", flag_key=INCIDENT, environment_key="development"),
                           {"version": str(shown_version)}, headers=HTMX)
    # Then the refusal is shown and the targeting is untouched
    assert response.status_code == 200
    assert "This targeting changed since you opened it" in response.content.decode()
    targeting.refresh_from_db()
    assert targeting.enabled is True
    assert catalog_state() == before


@pytest.mark.django_db
def test_toggle__missing_version__refused_as_stale(client, demo, login) -> None:
    login("owner")
    response = client.post(f"/p/{demo.key}/flags/support_ai_incident_fallback/targeting/staging/toggle/", {},
                           headers={"HX-Request": "true"})
    assert response.status_code == 409 and "out of date" in response.content.decode()
    assert not Flag.objects.get(project=demo, key="support_ai_incident_fallback").targetings.get(
        environment__key="staging").enabled

