"""Creating a plan from the console: the form prefilled from the seed template, saved as a draft
with its audit row; errors beside the stage or field, nothing saved; owners and editors only."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from rollouts.models import RolloutPlan
from rollouts.plans import design, transitions
from tests.html_forms import form_as_shown
from tests.rollouts.plans.support import (
    BASELINE,
    CANDIDATE,
    PROFILE,
    flag,
    plan_url,
)
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db


def _create_url() -> str:
    return reverse("rollouts:plan_create", kwargs={"project_key": "support-assistant", "flag_key": PROFILE})


def _form_data(client: Any) -> dict[str, Any]:
    """The form as the template fills it in: every field's initial value."""
    return {**form_as_shown(client.get(_create_url()).content.decode(), "stages-TOTAL_FORMS"), "on_breach": "pause"}


def test_create__template_prefilled__saves_a_draft_with_audit(client: Any, catalog: Any) -> None:
    client.force_login(user("owner"))
    page = client.get(_create_url()).content.decode()
    assert "Internal users" in page and "50 % experiment" in page and "Default behaviour" in page
    data = {**_form_data(client), "environment": "staging", "candidate": CANDIDATE, "reason": "Ship v4"}
    response = client.post(_create_url(), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    plan = RolloutPlan.objects.get()
    assert response["Location"] == plan_url(plan)
    stages = design.plan_stages(plan)
    assert [s.percentage for s in stages] == [0, 0, 5_000, 50_000, 100_000]
    assert stages[1].segments == ["beta_accounts", "internal_users"] or set(stages[1].segments) == {
        "internal_users", "beta_accounts"}
    assert stages[4].needs_approval and {g["metric"] for g in stages[0].guardrails} == set(flag().guardrail_metrics)
    assert (plan.status, plan.baseline, plan.candidate) == ("draft", BASELINE, CANDIDATE)
    assert AuditEvent.objects.filter(action="plan.created", target_id=str(plan.pk)).count() == 1


def test_create__shrinking_exposure__error_beside_the_stage_and_nothing_saved(client: Any, catalog: Any) -> None:
    client.force_login(user("owner"))
    data = {**_form_data(client), "environment": "staging", "candidate": CANDIDATE, "reason": "Ship v4",
            "stages-3-percentage": "1"}
    response = client.post(_create_url(), data)
    assert response.status_code == 422
    html = response.content.decode()
    stage_form = re.search(r'data-testid="stage-form-3">(.*?)</li>', html, re.S).group(1)
    assert "Exposure only grows" in stage_form
    assert not RolloutPlan.objects.exists()


def test_create__same_candidate_as_baseline__error_beside_the_field(client: Any, catalog: Any) -> None:
    client.force_login(user("owner"))
    data = {**_form_data(client), "environment": "staging", "candidate": BASELINE, "reason": "Ship v4"}
    response = client.post(_create_url(), data)
    assert response.status_code == 422 and b"must differ from the baseline" in response.content
    assert not RolloutPlan.objects.exists()


def test_create_form__huge_threshold_or_snan_percentage__422_nothing_saved(client: Any, catalog: Any) -> None:
    client.force_login(user("owner"))
    data = {**_form_data(client), "environment": "staging", "candidate": CANDIDATE, "reason": "x"}
    assert client.post(_create_url(), {**data, "guardrails-0-threshold": "1e308"}).status_code == 422
    response = client.post(_create_url(), {**data, "stages-1-percentage": "sNaN"})
    assert response.status_code == 422 and b"Enter a number." in response.content
    assert not RolloutPlan.objects.exists()


def test_create__approver_cannot_plan__403(client: Any, catalog: Any) -> None:
    client.force_login(user("pm"))
    assert client.get(_create_url()).status_code == 403


def test_create__assignment_unit_chosen__plan_buckets_on_it(client: Any, catalog: Any) -> None:
    client.force_login(user("owner"))
    data = {**_form_data(client), "environment": "staging", "candidate": CANDIDATE, "reason": "Ship v4",
            "assignment_unit": " userId "}
    assert client.post(_create_url(), data).status_code == 302
    plan = RolloutPlan.objects.get()
    assert plan.assignment_unit == "userId"
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    assert flag().targetings.get(environment__key="staging").assignment_unit == "userId"

