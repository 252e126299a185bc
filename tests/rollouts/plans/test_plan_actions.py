"""The plan page's actions (htmx, each with a reason): start, advance (disabled and refused before
the bake time), roll back, investigate and resolve, discard a draft; refusals beside the field,
and nothing for a closed plan or an unknown action."""

from __future__ import annotations

import re
from typing import Any

import pytest

from audit.models import AuditEvent
from rollouts.forms import REASON_REQUIRED
from rollouts.models import ReleaseDecision, RolloutPlan
from rollouts.plans import transitions
from tests.rollouts.plans.support import (
    htmx_post,
    make_plan,
    plan_url,
)
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db


def test_action__start_via_htmx__stage_live_decision_logged(client: Any, catalog: Any) -> None:
    plan = make_plan()
    client.force_login(user("owner"))
    response = htmx_post(client, plan_url(plan, "start"), {"reason": "Internal dogfood first"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and "Stage 1 is live: internal_users" in html
    plan.refresh_from_db()
    assert (plan.status, plan.stage_index) == ("running", 0)
    decision = ReleaseDecision.objects.get(plan=plan, action="start")
    assert (decision.reason, decision.actor_id, decision.actor_label) == ("Internal dogfood first", user("owner").pk, "owner")
    assert 'data-testid="plan-decisions"' in html and "Internal dogfood first" in html


def test_action__no_reason__error_beside_the_field_nothing_changes(client: Any, catalog: Any) -> None:
    plan = make_plan()
    client.force_login(user("owner"))
    response = htmx_post(client, plan_url(plan, "start"), {"reason": "  "})
    assert response.status_code == 422 and REASON_REQUIRED.encode() in response.content
    plan.refresh_from_db()
    assert plan.status == "draft" and not ReleaseDecision.objects.exists()


def test_action__advance_before_bake__button_disabled_and_forged_post_refused(client: Any, catalog: Any) -> None:
    plan = make_plan(bake=60)
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    client.force_login(user("owner"))
    html = client.get(plan_url(plan)).content.decode()
    assert re.search(r'value="advance"[^>]*disabled', html, re.S) and "bakes for 1 h:" in html
    response = htmx_post(client, plan_url(plan, "advance"), {"reason": "hurry"})
    assert response.status_code == 422 and b"minute(s) left" in response.content
    plan.refresh_from_db()
    assert plan.stage_index == 0


def test_action__operator_rolls_back_but_cannot_advance(client: Any, catalog: Any) -> None:
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    client.force_login(user("operator"))
    assert htmx_post(client, plan_url(plan, "advance"), {"reason": "x"}).status_code == 403
    response = htmx_post(client, plan_url(plan, "rollback"), {"reason": "Customers complain"})
    assert response.status_code == 200
    plan.refresh_from_db()
    assert plan.status == "rolled_back"


def test_action__investigate_then_resolve__attention_flag_round_trip(client: Any, catalog: Any) -> None:
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    client.force_login(user("pm"))
    assert htmx_post(client, plan_url(plan, "investigate"), {"reason": "Odd latency"}).status_code == 200
    plan.refresh_from_db()
    assert plan.needs_attention
    assert htmx_post(client, plan_url(plan, "resolve"), {"reason": "Cache warm-up, fine"}).status_code == 200
    plan.refresh_from_db()
    assert not plan.needs_attention
    assert list(ReleaseDecision.objects.filter(plan=plan).values_list("action", flat=True)) == [
        "start", "investigate", "resolve"]
    assert AuditEvent.objects.filter(action="plan.attention_cleared").count() == 1


def test_action__discard_draft__closed_and_a_new_plan_allowed(client: Any, catalog: Any) -> None:
    plan = make_plan()
    client.force_login(user("owner"))
    assert htmx_post(client, plan_url(plan, "discard"), {"reason": "Wrong candidate"}).status_code == 200
    plan.refresh_from_db()
    assert plan.status == "discarded"
    assert AuditEvent.objects.filter(action="plan.discarded").count() == 1
    make_plan()  # the flag may be planned again in that environment


def test_action__discard_started_plan__refused(client: Any, catalog: Any) -> None:
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    client.force_login(user("owner"))
    response = htmx_post(client, plan_url(plan, "discard"), {"reason": "x"})
    assert response.status_code == 422 and b"only a draft" in response.content
    assert RolloutPlan.objects.get(pk=plan.pk).status == "running"


def test_action__unknown_action__404(client: Any, catalog: Any) -> None:
    plan = make_plan()
    client.force_login(user("owner"))
    assert client.post(plan_url(plan, "explode"), {"reason": "x"}).status_code == 404


def test_closed_plan__investigation_cannot_be_cleared_by_a_forged_post(client: Any, catalog: Any) -> None:
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    transitions.plan_investigate(plan=plan, reason="odd", actor=user("pm"))
    transitions.plan_rollback(plan=plan, reason="stop", actor=user("owner"))
    client.force_login(user("pm"))
    response = htmx_post(client, plan_url(plan, "resolve"), {"reason": "forged"})
    assert response.status_code == 422
    assert not ReleaseDecision.objects.filter(plan=plan, action="resolve").exists()
    page = client.get(plan_url(plan)).content.decode()
    assert 'data-testid="plan-attention"' not in page and "rolled back here" in page

