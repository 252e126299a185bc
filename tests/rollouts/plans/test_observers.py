"""What rollout plans do when change control stops a flag (rollouts/plans/observers.py): the kill
switch or incident mode pauses the running plans there, a stage's pending request is
cancelled, and the plan cannot expand while the flag is off."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from rollouts.change_control import incident_mode, kill_switch
from rollouts.models import ChangeRequest, ReleaseDecision
from rollouts.plans import design, transitions
from rollouts.plans import pages as plan_pages
from tests.rollouts.plans.support import (
    BASELINE,
    CANDIDATE,
    environment,
    flag,
    fresh,
    make_plan,
    targeting,
)
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db


def test_kill_switch__running_plan_pauses_and_cannot_expand_while_the_flag_is_off(catalog: Any) -> None:
    # Given a running plan in staging
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    staging = flag().targetings.get(environment__key="staging")
    # When the operator flips the kill switch there
    kill_switch.killswitch_flip(targeting=staging, reason="Bad answers", actor=user("operator"))
    # Then the plan paused in the same transaction, by the operator, with the reason
    plan.refresh_from_db()
    assert plan.status == "paused"
    pause = ReleaseDecision.objects.filter(plan=plan).latest("id")
    assert (pause.action, pause.actor_label, pause.reason) == ("pause", "operator", "Kill switch: Bad answers")
    # and resuming does not let the plan turn the stopped flag back on
    transitions.plan_resume(plan=plan, reason="Fixed upstream", actor=user("owner"))
    with pytest.raises(ValidationError, match="is off in Staging"):
        transitions.plan_advance(plan=plan, reason="more", actor=user("owner"))
    staging.refresh_from_db()
    assert staging.enabled is False


def test_incident_mode__running_plans_in_that_environment_pause(catalog: Any) -> None:
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    incident_mode.incident_start(environment=environment("staging"), surfaces=[], reason="Provider outage",
                            actor=user("operator"))
    plan.refresh_from_db()
    assert plan.status == "paused"
    assert AuditEvent.objects.filter(action="plan.paused", target_id=str(plan.pk)).count() == 1


def test_advance_before_first_stage__flag_stopped_meanwhile__refused(catalog: Any) -> None:
    # Given a staging plan whose first stage waits for approval
    stages = [{"name": "Internal", "segments": ["internal_users"], "percentage": 0, "needs_approval": True},
              {"name": "Beta", "segments": ["internal_users", "beta_accounts"], "percentage": 0}]
    plan = design.plan_create(flag=flag(), environment=environment("staging"), baseline=BASELINE,
                             candidate=CANDIDATE, stages=stages, actor=user("owner"), reason="x")
    plan = transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    request = plan.pending_change_request
    # When the operator stops the flag, and the owner resumes and advances
    kill_switch.killswitch_flip(targeting=targeting("staging"), reason="stop", actor=user("operator"))
    assert ChangeRequest.objects.get(pk=request.pk).status == "cancelled"
    plan = transitions.plan_resume(plan=fresh(plan), reason="resume", actor=user("owner"))
    # Then no request that would turn the flag back on is opened
    with pytest.raises(ValidationError, match="is off in Staging"):
        transitions.plan_advance(plan=plan, reason="again", actor=user("owner"))
    assert ChangeRequest.objects.filter(status="pending").count() == 0
    # and the page offers the advance disabled, with the reason
    actions = plan_pages.plan_page(fresh(plan), user("owner"))["actions"]
    advance = next(a for a in actions if a.action == "advance")
    assert "never turns a flag on" in advance.blocked

