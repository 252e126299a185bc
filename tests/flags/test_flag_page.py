"""A flag's page: its contract, variations (JSON pretty-printed, as typed) and one targeting card
per environment; governed production offers a proposal, not a toggle; the auditor reads it
without edit controls."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.utils.html import escape

from flags import services
from flags.constants import BehaviorSurface, Lifetime, ValueType
from flags.models import Project
from tests.factories import TEST_ACTOR
from tests.flags.support import (
    PROFILE,
    PROJECT,
    TOOL_MODE,
    console_url,
    demo_flag,
)


@pytest.mark.django_db
def test_flag_detail__json_flag__shows_contract_variations_and_targeting(client: Any, login: Callable[[str], Any]) -> None:
    # Given the demo JSON flag with its contract, three variations and three environments
    login("owner")
    flag = demo_flag(PROFILE)
    # When its page is opened
    response = client.get(console_url("flag_detail", flag_key=PROFILE))
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
    content = client.get(console_url("flag_detail", flag_key="french_prompt")).content.decode()
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
    content = client.get(console_url("flag_detail", flag_key=TOOL_MODE)).content.decode()
    # Then the production card says governed, offers a proposal (a change request when risky),
    # and neither the direct toggle nor the direct editor
    production = _card(content, "production")
    assert "governed" in production
    assert "changes that raise risk wait for approval" in production
    assert f"/p/{PROJECT}/flags/{TOOL_MODE}/propose/production/" in production
    assert "Turn off" not in production and "Turn on" not in production
    assert console_url("targeting_toggle", flag_key=TOOL_MODE, environment_key="production") not in content
    assert console_url("targeting_edit", flag_key=TOOL_MODE, environment_key="production") not in content
    # while development, not governed, can be toggled and edited by this editor
    development = _card(content, "development")
    assert "read-only" not in development
    assert console_url("targeting_toggle", flag_key=TOOL_MODE, environment_key="development") in development
    assert console_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development") in development


@pytest.mark.django_db
def test_flag_detail__auditor__can_read_but_gets_no_edit_controls(client: Any, login: Callable[[str], Any]) -> None:
    # Given the auditor, a read-only role
    login("auditor")
    # When the auditor opens a flag
    response = client.get(console_url("flag_detail", flag_key=TOOL_MODE))
    # Then the page is readable but offers no way to change anything
    assert response.status_code == 200
    content = response.content.decode()
    assert console_url("flag_edit", flag_key=TOOL_MODE) not in content
    assert console_url("variation_create", flag_key=TOOL_MODE) not in content
    assert "/toggle/" not in content
    assert "Edit targeting" not in content

