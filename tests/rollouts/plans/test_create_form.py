"""Creating a plan from the console: the form prefilled from the seed template, saved as a draft
with its audit row; errors beside the stage or field, nothing saved; owners and editors only;
under each stage, how long it needs at the traffic of the last 7 days."""

from __future__ import annotations

import html as html_text
import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
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
    report,
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



# --- how long each stage needs (rollouts/plans/power.py) ----------------------------------------


def _stage_power(html: str, index: int) -> str:
    found = re.search(rf'data-testid="stage-power-{index}">(.*?)</div>\s*</li>', html, re.S)
    assert found, f"no estimate under stage {index}"
    return " ".join(html_text.unescape(re.sub(r"<[^>]+>", " ", found.group(1))).split())


def test_create_form__recent_traffic__each_stage_shows_how_long_it_needs(client: Any, catalog: Any) -> None:
    # Given 500 latencies (200 ms, one histogram bin) reported in production an hour ago, and no
    # other guardrail metric reported
    report("production", {BASELINE: [200.0] * 500}, minutes_ago=60)
    client.force_login(user("owner"))
    # When the owner opens the form (production is the environment it proposes)
    html = client.get(_create_url()).content.decode()
    # Then the page says what the estimates rest on
    assert "at the traffic of the last 7 days in Production" in html
    # ... the segments-only stages cannot know their share and say so
    assert "Depends on how many units internal_users hold" in _stage_power(html, 0)
    # ... the 5 % stage reads 500 / 7 ≈ 71 latencies a day, 5 % of them for the candidate: a
    # relative p95 needs more than 2,143 observations, its 30 days' worth (unit tests: test_power.py)
    five = _stage_power(html, 2)
    assert ("latency_p95 (at most 20 % worse): more than 30 days at the traffic of the last 7 days (≈ 71 outcomes "
            "a day reach this flag; this stage sends 5 % of them to the candidate, plus its segments' units)") in five
    # ... the 50 % experiment gets there within its 30 days
    assert re.search(r"latency_p95 \(at most 20 % worse\): about \d+ days at the traffic of the last 7 days",
                     _stage_power(html, 3))
    # ... a metric nobody reported says so, and nothing is guessed
    assert "correction_rate (at most 20 % worse): no correction_rate outcomes in the last 7 days: cannot estimate" in five
    # ... and at 100 % nothing is left to compare with
    assert "no baseline is left to compare with" in _stage_power(html, 4)


def test_create_form__no_traffic__says_it_cannot_estimate(client: Any, catalog: Any) -> None:
    # Given a flag with no traffic at all in the last 7 days
    client.force_login(user("owner"))
    # When the owner opens the form
    html = client.get(_create_url()).content.decode()
    # Then every guardrail of a percentage stage says so instead of a time
    for index in (2, 3):
        words = _stage_power(html, index)
        assert words.count("no traffic in the last 7 days: cannot estimate") == len(flag().guardrail_metrics)
        assert "about" not in words


def test_create_form__posted_with_errors__estimates_follow_the_posted_stages(client: Any, catalog: Any) -> None:
    # Given latencies reported in production and the form posted with a 10 % third stage but no reason
    report("production", {BASELINE: [200.0] * 500}, minutes_ago=60)
    client.force_login(user("owner"))
    data = {**_form_data(client), "environment": "production", "candidate": CANDIDATE, "reason": "",
            "stages-2-percentage": "10"}
    # When the page comes back with the error
    response = client.post(_create_url(), data)
    # Then the third stage's estimate is for 10 %, not the template's 5 %
    assert response.status_code == 422
    assert "this stage sends 10 % of them to the candidate" in _stage_power(response.content.decode(), 2)


def test_create_form__more_stages__same_number_of_queries(client: Any, catalog: Any) -> None:
    # Given the form as shown (five stages), posted without a reason so that it comes back
    report("production", {BASELINE: [200.0] * 500}, minutes_ago=60)
    client.force_login(user("owner"))
    data = {**_form_data(client), "environment": "production", "candidate": CANDIDATE, "reason": ""}
    more = dict(data)
    for index in range(5, 9):  # three more stages at 100 %, and the blank row after them
        more.update({f"stages-{index}-name": f"More {index}", f"stages-{index}-percentage": "100",
                     f"stages-{index}-min_bake_minutes": "0",
                     f"stages-{index}-segments": ["internal_users", "beta_accounts"]} if index < 8 else {})
    more["stages-TOTAL_FORMS"] = "9"
    # When each is posted
    with CaptureQueriesContext(connection) as five:
        assert client.post(_create_url(), data).status_code == 422
    with CaptureQueriesContext(connection) as eight:
        response = client.post(_create_url(), more)
    # Then the three more stages, each with its estimate, cost no query
    assert response.status_code == 422
    assert "no baseline is left to compare with" in _stage_power(response.content.decode(), 7)
    assert len(eight) == len(five)
