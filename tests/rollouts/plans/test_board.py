"""The rollout board: how to start when empty, each running plan's stage, time, guardrails and
next step (plans judged in one batch, each on its own evidence), a query count that does not
grow with plans, and picking a flag to plan."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from rollouts.models import RolloutPlan
from rollouts.plans import design, measurement, transitions
from tests.rollouts.plans.support import (
    BASELINE,
    CANDIDATE,
    PROFILE,
    make_plan,
    report,
)
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db


def board_url() -> str:
    return reverse("rollouts:plan_board", kwargs={"project_key": "support-assistant"})


def test_board__no_plans__explains_how_to_start(client: Any, catalog: Any) -> None:
    client.force_login(user("auditor"))
    response = client.get(board_url())
    assert response.status_code == 200
    assert b"No rollout in progress" in response.content


def test_board__running_plan__stage_time_guardrails_and_next_step(client: Any, catalog: Any) -> None:
    plan = make_plan(bake=30)
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    # a p95 guardrail needs a few hundred outcomes per variant before it is judged (a batch
    # holds at most 1,000 events: 150 exposures and outcomes per variant at a time)
    for _ in range(2):
        report("staging", {BASELINE: [100.0] * 150, CANDIDATE: [300.0] * 150})
    client.force_login(user("pm"))
    html = client.get(board_url()).content.decode()
    row = re.search(rf'<tr data-plan="{plan.pk}">(.*?)</tr>', html, re.S).group(1)
    assert "1 of 4 · Internal users" in row
    # the verdict in words, with the metric's name
    assert 'data-status="red"' in row and re.search(r"Latency \(p95\) is worse by [\d.]+ %–[\d.]+ % than the "
                                                    r"baseline with 95 % confidence \(20 % worse allowed\): breached", row)
    # and what the sweep will do: the plan is in its first stage, so stepping back is rolling back
    assert "Guardrail breached: the plan rolls back to baseline_v3 at the next check" in row


def test_board__queries_do_not_grow_with_plans(client: Any, catalog: Any, django_assert_max_num_queries: Any) -> None:
    transitions.plan_start(plan=make_plan("staging"), reason="go", actor=user("owner"))
    client.force_login(user("pm"))
    with CaptureQueriesContext(connection) as one:
        client.get(board_url())
    for env_key in ("development", "production"):
        transitions.plan_start(plan=make_plan(env_key), reason="go", actor=user("owner"))
    with CaptureQueriesContext(connection) as three:
        client.get(board_url())
    assert len(three) == len(one)


def test_board__pick_a_flag__goes_to_the_new_plan_form(client: Any, catalog: Any) -> None:
    client.force_login(user("owner"))
    response = client.get(board_url(), {"flag": PROFILE})
    assert response.status_code == 302 and response["Location"].endswith(f"/flags/{PROFILE}/rollout-plan/new/")


def test_board__two_plans_judged_in_one_batch__each_keeps_its_own_evidence(client: Any, catalog: Any) -> None:
    red, green = make_plan("staging"), make_plan("development")
    for plan in (red, green):
        transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    for _ in range(2):  # a few hundred outcomes per variant (module's first test)
        report("staging", {BASELINE: [100.0] * 150, CANDIDATE: [300.0] * 150})
        report("development", {BASELINE: [100.0] * 150, CANDIDATE: [101.0] * 150})
    batch = measurement.plans_evidence([RolloutPlan.objects.get(pk=p.pk) for p in (red, green)],
                                 stages_by_plan={p.pk: design.plan_stages(p) for p in (red, green)})
    assert (batch[red.pk]["status"], batch[green.pk]["status"]) == ("red", "green")
    assert batch[red.pk]["variants"][CANDIDATE]["exposures"] == 300
    assert batch[green.pk]["variants"][CANDIDATE]["exposures"] == 300
    assert batch[green.pk]["variants"][CANDIDATE]["metrics"]["latency_p95"]["count"] == 300
    client.force_login(user("pm"))
    html = client.get(board_url()).content.decode()
    for plan, status in ((red, "red"), (green, "green")):
        row = re.search(rf'<tr data-plan="{plan.pk}">(.*?)</tr>', html, re.S).group(1)
        assert f'data-status="{status}"' in row


def test_next_step__bake_countdown_rounds_up_and_never_reads_zero(catalog: Any) -> None:
    plan = make_plan(bake=2)
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    plan.refresh_from_db()
    stages = design.plan_stages(plan)
    from rollouts.plans.pages import next_step
    entered = plan.stage_entered_at
    assert next_step(plan, stages, "green", now=entered + datetime.timedelta(seconds=30)).endswith("in 2 min")
    assert next_step(plan, stages, "green", now=entered + datetime.timedelta(seconds=90)).endswith("in under a minute")
    assert next_step(plan, stages, "green", now=entered + datetime.timedelta(seconds=121)) == \
        "Advance to stage 2 (Beta accounts)"

