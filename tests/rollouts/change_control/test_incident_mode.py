"""Incident mode (rollouts/change_control/incident_mode.py): every flag on in an environment (or
those of chosen surfaces) to its fallback at once; lifting turns back on exactly those that
would serve again what they served, and leaves the rest as they are."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from flags import services as flag_services
from flags.constants import LifecycleStage
from flags.models import Environment, Flag, Targeting
from rollouts.change_control import incident_mode
from rollouts.models import FollowUp, Incident
from tests.factories import TEST_ACTOR
from tests.rollouts.support import PROFILE, production, user

pytestmark = pytest.mark.django_db


def test_incident_mode__chosen_surfaces_to_fallback_then_lifted(demo) -> None:
    env = Environment.objects.get(key="production")
    with pytest.raises(ValidationError, match="operator"):
        incident_mode.incident_start(environment=env, surfaces=[], reason="x", actor=user("owner"))
    with pytest.raises(ValidationError):
        incident_mode.incident_start(environment=env, surfaces=["no_such_surface"], reason="x", actor=user("operator"))
    incident = incident_mode.incident_start(environment=env, surfaces=["agent_tools"], reason="tool misuse",
                                       actor=user("operator"))
    assert [a["flag"] for a in incident.affected] == ["support_agent_tool_mode"]
    assert production().enabled is False and production(PROFILE).enabled is True  # other surfaces untouched
    assert FollowUp.objects.get().incident == incident
    assert AuditEvent.objects.get(action="incident.started").reason == "tool misuse"
    with pytest.raises(ValidationError, match="already on"):
        incident_mode.incident_start(environment=env, surfaces=[], reason="again", actor=user("operator"))
    incident_mode.incident_lift(incident=incident, reason="fixed", actor=user("operator"))
    assert production().enabled is True
    assert Incident.objects.get().lifted_at is not None
    assert AuditEvent.objects.get(action="incident.lifted").after == {"restored": ["support_agent_tool_mode"],
                                                                        "left": [], "plans_still_paused": []}
    with pytest.raises(ValidationError, match="lifted already"):
        incident_mode.incident_lift(incident=incident, reason="twice", actor=user("operator"))


def test_incident_mode__everything_then_a_flag_changed_meanwhile_stays_as_it_is(demo) -> None:
    env = Environment.objects.get(key="production")
    incident = incident_mode.incident_start(environment=env, surfaces=[], reason="provider outage", actor=user("operator"))
    assert sorted(a["flag"] for a in incident.affected) == ["support_agent_tool_mode", "support_assistant_profile"]
    assert not Targeting.objects.filter(environment=env, enabled=True).exists()
    # Someone reshapes the profile flag's targeting during the incident
    flag_services.targeting_update(targeting=production(PROFILE), actor=user("owner"), rules=[], reason="simplify")
    lifted = incident_mode.incident_lift(incident=incident, reason="provider back", actor=user("operator"))
    assert lifted.restored == ["support_agent_tool_mode"] and lifted.left == ["support_assistant_profile"]
    assert production().enabled is True and production(PROFILE).enabled is False


def test_incident_mode__nothing_on__refused_and_nothing_written(demo) -> None:
    env = Environment.objects.get(key="production")
    before = AuditEvent.objects.count()
    with pytest.raises(ValidationError, match="nothing to send"):
        incident_mode.incident_start(environment=env, surfaces=["fallback_mode"], reason="x", actor=user("operator"))
    assert AuditEvent.objects.count() == before and not Incident.objects.exists()


def test_incident_lift__a_flag_that_may_no_longer_go_on_is_left_the_rest_restored(demo: Any) -> None:
    environment = production().environment
    incident = incident_mode.incident_start(environment=environment, surfaces=[], reason="outage", actor=user("operator"))
    # During the incident the profile flag (cleanup due) is archived
    profile = Flag.objects.get(key="support_assistant_profile")
    Flag.objects.filter(pk=profile.pk).update(stage=LifecycleStage.CLEANUP_DUE)
    profile.refresh_from_db()
    flag_services.targeting_update(targeting=profile.targetings.get(environment__key="development"),
                                   actor=TEST_ACTOR, enabled=False)
    flag_services.targeting_update(targeting=profile.targetings.get(environment__key="staging"),
                                   actor=TEST_ACTOR, enabled=False)
    flag_services.flag_archive(flag=profile, actor=TEST_ACTOR, reason="replaced")
    lifted = incident_mode.incident_lift(incident=incident, reason="provider back", actor=user("operator"))
    assert lifted.restored == ["support_agent_tool_mode"] and lifted.left == ["support_assistant_profile"]
    assert production().enabled is True

