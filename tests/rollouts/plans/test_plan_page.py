"""The plan page: stages and what its reader may do, charts, sample sizes and guardrails from
telemetry, a query count that does not grow with decisions, and nothing for another project's
members."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from flags.constants import Role
from flags.services import membership_grant
from rollouts.models import ChangeRequest, RolloutPlan
from rollouts.plans import transitions
from tests.factories import TEST_ACTOR
from tests.rollouts.plans.support import (
    BASELINE,
    CANDIDATE,
    make_plan,
    plan_url,
    report,
)
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db


def test_page__draft__stages_and_start_button_for_the_owner_only(client: Any, catalog: Any) -> None:
    plan = make_plan()
    client.force_login(user("owner"))
    html = client.get(plan_url(plan)).content.decode()
    assert "1. Internal users" in html and "4. 50 %" in html
    assert "Start: stage 1 (Internal users)" in html and "Discard draft" in html
    client.force_login(user("auditor"))
    html = client.get(plan_url(plan)).content.decode()
    assert "Start: stage 1" not in html and "do not steer this plan" in html


def test_page__charts_samples_and_guardrails_from_telemetry(client: Any, catalog: Any) -> None:
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    report("staging", {BASELINE: [100.0] * 25, CANDIDATE: [110.0] * 25})
    client.force_login(user("pm"))
    html = client.get(plan_url(plan)).content.decode()
    chart = re.search(r'data-testid="chart-latency_p95">(.*?)</figure>', html, re.S).group(1)
    assert "<svg" in chart and chart.count("<circle") >= 2
    assert f"{CANDIDATE} 25 samples" in re.sub(r"<[^>]+>", "", chart)
    samples = re.search(r'data-testid="plan-samples">(.*?)</table>', html, re.S).group(1)
    assert re.search(rf"{BASELINE}.*?<td>25</td><td>25</td>", samples, re.S)
    guardrails = re.search(r'data-testid="plan-guardrails">(.*?)</table>', html, re.S).group(1)
    assert 'data-status="green"' in guardrails and "at most 1.2 × baseline" in guardrails


def test_page__queries_do_not_grow_with_decisions(client: Any, catalog: Any) -> None:
    plan = make_plan()
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    client.force_login(user("pm"))
    with CaptureQueriesContext(connection) as before:
        client.get(plan_url(plan))
    for i in range(4):
        transitions.plan_investigate(plan=plan, reason=f"look {i}", actor=user("pm"))
        transitions.plan_resolve(plan=plan, reason=f"fine {i}", actor=user("pm"))
    with CaptureQueriesContext(connection) as after:
        client.get(plan_url(plan))
    assert len(after) == len(before)


def test_other_project_member__plan_is_404(client: Any, catalog: Any, make_user: Any) -> None:
    plan = make_plan()
    from tests.factories import make_project
    other = make_project("elsewhere")
    stranger = make_user("stranger")
    membership_grant(project=other, user=stranger, role=Role.EDITOR, actor=TEST_ACTOR)
    client.force_login(stranger)
    assert client.get(plan_url(plan)).status_code == 404
    assert client.post(plan_url(plan, "rollback"), {"reason": "x"}).status_code == 404
    assert RolloutPlan.objects.get(pk=plan.pk).status == "draft"
    assert not ChangeRequest.objects.exists()

