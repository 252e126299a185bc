"""The evidence on the change request of a stage that needs approval (rollouts/plans/pages.py): the
approver sees it beside the diff, applying moves the plan, and once the plan has moved on the
page shows the evidence as it was recorded."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.urls import reverse

from rollouts.change_control import applying, approving
from rollouts.models import ChangeRequest, ReleaseDecision, RolloutStage
from rollouts.plans import pages as plan_pages
from rollouts.plans import transitions
from tests.rollouts.plans.support import (
    BASELINE,
    CANDIDATE,
    approve_and_apply,
    baked,
    htmx_post,
    make_plan,
    plan_url,
    report,
)
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db


def test_stage_needing_approval__request_page_shows_evidence_and_apply_moves_the_plan(
        client: Any, catalog: Any, django_capture_on_commit_callbacks: Any) -> None:
    plan = make_plan(last_needs_approval=True)
    for reason in ("start", "beta", "5 %"):
        (transitions.plan_start if reason == "start" else transitions.plan_advance)(plan=plan, reason=reason, actor=user("owner"))
    # a p95 guardrail is judged on a few hundred outcomes per variant (a batch holds at most 1,000 events)
    for _ in range(2):
        report("staging", {BASELINE: [100.0] * 150, CANDIDATE: [105.0] * 150})
    client.force_login(user("owner"))
    response = htmx_post(client, plan_url(plan, "advance"), {"reason": "5 % looks healthy"})
    assert b"waits for approval" in response.content
    plan.refresh_from_db()
    change_request = plan.pending_change_request
    assert plan.stage_index == 2 and change_request is not None
    # The approver sees the evidence beside the diff
    client.force_login(user("pm"))
    page = client.get(reverse("rollouts:change_request", kwargs={"project_key": "support-assistant",
                                                                 "pk": change_request.pk})).content.decode()
    evidence = re.search(r'data-testid="cr-evidence">(.*?)</section>', page, re.S).group(1)
    assert "Stage 4 (50 %)" in evidence and 'data-status="green"' in evidence and "<svg" in evidence
    # in words too: the guardrail's verdict beside its rule, and its band over the stage, green
    message = re.search(r'data-testid="guardrail-message">(.*?)</div>', evidence, re.S).group(1)
    assert re.fullmatch(r"Latency \(p95\) is (worse|better) by [\d.]+ %–[\d.]+ % than the baseline with 95 % confidence "
                        r"\(20 % worse allowed\): holds", message), message
    band = re.search(r'data-testid="band-latency_p95" data-verdict="(\w+)">(.*?)</details>', evidence, re.S)
    assert band.group(1) == "green" and "Latency (p95) is" in band.group(2) and "<polygon" in band.group(2)
    # and the split of stage 3 (5 %) checked against its weights, in words
    assert re.search(r'data-testid="sample-ratio">[^<]*\d+ of \d+ units \([\d.]+ %\) fall in', evidence)
    # Approved (one approval is required, and approvals stop there), applied by the owner:
    # the plan follows right after the commit
    assert change_request.required_approvals == 1
    with django_capture_on_commit_callbacks(execute=True):
        approving.change_request_approve(change_request=change_request, actor=user("pm"))
        applying.change_request_apply(change_request=change_request, actor=user("owner"))
    plan.refresh_from_db()
    assert (plan.stage_index, plan.pending_change_request_id) == (3, None)
    assert ReleaseDecision.objects.filter(plan=plan, action="advance", change_request=change_request,
                                          to_stage=3).count() == 2


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

