"""Regression tests for what a review of the rollout console found: out-of-range guardrail
numbers, a breach whose roll-back would need approval, a stopped flag turned back on by a
request, a request page showing another stage's evidence, archived flags, closed plans."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from flags import services as flag_services
from rollouts.change_control import kill_switch
from rollouts.models import ChangeRequest, ReleaseDecision, RolloutPlan, RolloutStage
from rollouts.plans import breaches, design, transitions
from rollouts.plans import pages as plan_pages
from rollouts.plans.guardrails import AMBER, evaluate_guardrail, guardrail_problems
from telemetry.services import events_aggregate
from tests.factories import TEST_ACTOR
from tests.rollouts.support import user
from tests.rollouts.test_plan_views import (
    BASELINE,
    CANDIDATE,
    environment,
    flag,
    htmx_post,
    make_plan,
    plan_url,
)
from tests.rollouts.test_plans import approve_and_apply, baked, fresh, post_latencies, targeting

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_caches")]

LATENCY = {"metric": "latency_p95", "kind": "relative_max", "threshold": 1.2, "min_samples": 20}


def test_guardrail__huge_threshold__refused_and_never_judged_as_infinity() -> None:
    assert any("at most" in p for p in guardrail_problems({**LATENCY, "threshold": 1e308}))
    judged = evaluate_guardrail({**LATENCY, "threshold": 1e300}, baseline="b", candidate="c", metric_kind="p95",
                                evidence={"b": {"metrics": {"latency_p95": {"p95": 1e300, "count": 50}}},
                                          "c": {"metrics": {"latency_p95": {"p95": 5.0, "count": 50}}}})
    assert judged.status == AMBER and judged.limit is None and "out of range" in judged.message


def test_create_form__huge_threshold_or_snan_percentage__422_nothing_saved(client: Any, catalog: Any) -> None:
    from tests.rollouts.test_plan_views import _create_url, _form_data

    client.force_login(user("owner"))
    data = {**_form_data(client), "environment": "staging", "candidate": CANDIDATE, "reason": "x"}
    assert client.post(_create_url(), {**data, "guardrails-0-threshold": "1e308"}).status_code == 422
    response = client.post(_create_url(), {**data, "stages-1-percentage": "sNaN"})
    assert response.status_code == 422 and b"Enter a number." in response.content
    assert not RolloutPlan.objects.exists()


def test_breach__rollback_would_need_approval__plan_paused_instead_and_people_told(catalog: Any) -> None:
    # Given a production plan whose baseline is not the flag's fallback and that rolls back on a breach
    stages = [{"name": "Internal", "segments": ["internal_users"], "percentage": 0, "min_bake_minutes": 0,
               "guardrails": [LATENCY]}]
    plan = design.plan_create(flag=flag(), environment=environment("production"), baseline="fallback_human_review",
                             candidate=CANDIDATE, stages=stages, actor=user("owner"), reason="x",
                             on_breach="rollback")
    plan = transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    if plan.pending_change_request_id:
        approve_and_apply(plan.pending_change_request)
        plan = transitions.plan_sync(plan)
    plan = baked(plan, minutes=30)
    key = flag_services.sdk_key_create(environment=environment("production"), name="t", actor=TEST_ACTOR)[1]
    post_latencies(key, "fallback_human_review", 100, 60)
    post_latencies(key, CANDIDATE, 400, 60)
    events_aggregate()
    # When the guardrail sweep runs
    assert breaches.check_guardrails() == 1
    # Then the breach is recorded and the plan paused, since rolling back would have waited
    plan = fresh(plan)
    assert plan.status == "paused"
    breach, pause = ReleaseDecision.objects.filter(plan=plan, action__in=("breach", "pause")).order_by("id")
    assert "would need approval here, so the plan was paused instead" in pause.reason
    assert breach.actor_label == pause.actor_label == "system:guardrails"


def test_sweep__one_plan_failing__the_others_are_still_checked(catalog: Any, caplog: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = make_plan("staging"), make_plan("development")
    for plan in (first, second):
        transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    checked = []
    real = breaches.plan_guardrails_check

    def check(*, plan: RolloutPlan) -> bool:
        if plan.pk == first.pk:
            raise RuntimeError("broken evidence")
        checked.append(plan.pk)
        return real(plan=plan)

    monkeypatch.setattr(breaches, "plan_guardrails_check", check)
    with caplog.at_level(logging.ERROR, logger="rollouts.plans"):
        breaches.check_guardrails()
    assert checked == [second.pk]
    assert any(f"rollout plan {first.pk} failed" in r.getMessage() for r in caplog.records)


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


def test_request_page__plan_moved_on__shows_the_evidence_recorded_then(client: Any, catalog: Any) -> None:
    plan = make_plan()
    RolloutStage.objects.filter(plan=plan, order=1).update(needs_approval=True)
    plan = transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    plan = transitions.plan_advance(plan=plan, reason="beta", actor=user("owner"))
    request = plan.pending_change_request
    approve_and_apply(request)
    plan = transitions.plan_sync(plan)
    plan = transitions.plan_advance(plan=baked(plan), reason="5 %", actor=user("owner"))
    evidence = plan_pages.request_evidence(ChangeRequest.objects.get(pk=request.pk))
    assert evidence["live"] is False and evidence["step"].startswith("Stage 2 (Beta accounts)")
    client.force_login(user("pm"))
    page = client.get(reverse("rollouts:change_request", kwargs={"project_key": "support-assistant",
                                                                 "pk": request.pk})).content.decode()
    assert "the evidence as it was then" in page


def test_archived_flag__no_new_plan(catalog: Any) -> None:
    for targeting_row in flag().targetings.filter(enabled=True):
        kill_switch.killswitch_flip(targeting=targeting_row, reason="off", actor=user("operator"))
    flag_services.flag_archive(flag=flag(), reason="done", actor=user("owner"))
    with pytest.raises(ValidationError, match="archived"):
        make_plan()
    assert not RolloutPlan.objects.exists()


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
