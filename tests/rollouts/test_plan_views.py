"""The rollout console: the board, plan creation from the template, the plan page (timeline,
charts, guardrails, sample sizes, decision log), htmx actions with reasons and their
refusals, and the evidence on the change request of a stage that needs approval."""

from __future__ import annotations

import datetime
import re
import uuid
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from flags.constants import Role
from flags.models import Environment, Flag
from flags.services import membership_grant, sdk_key_create
from flags.snapshot_store import reset_store
from rollouts.change_control import applying, approving, incident_mode, kill_switch
from rollouts.models import ChangeRequest, ReleaseDecision, RolloutPlan
from rollouts.plans import design, measurement, transitions
from rollouts.plans.charts import Point, line_chart, nice_ticks
from telemetry.services import events_aggregate
from tests.factories import TEST_ACTOR
from tests.ofrep_client import call
from tests.rollouts.support import user

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_caches")]

PROFILE = "support_assistant_profile"
BASELINE, CANDIDATE = "baseline_v3", "citation_first_v4"
LATENCY = {"metric": "latency_p95", "kind": "relative_max", "threshold": 1.2, "min_samples": 20}






def flag() -> Flag:
    return Flag.objects.get(key=PROFILE)


def environment(key: str) -> Environment:
    return Environment.objects.get(project__key="support-assistant", key=key)


def make_plan(env_key: str = "staging", bake: int = 0, last_needs_approval: bool = False) -> RolloutPlan:
    stages = [{"name": name, "segments": segments, "percentage": percentage, "min_bake_minutes": bake,
               "guardrails": [LATENCY], "needs_approval": last_needs_approval and i == 3}
              for i, (name, segments, percentage) in enumerate([
                  ("Internal users", ["internal_users"], 0), ("Beta accounts", ["internal_users", "beta_accounts"], 0),
                  ("5 %", ["internal_users", "beta_accounts"], 5_000),
                  ("50 %", ["internal_users", "beta_accounts"], 50_000)])]
    return design.plan_create(flag=flag(), environment=environment(env_key), baseline=BASELINE, candidate=CANDIDATE,
                             stages=stages, actor=user("owner"), reason="v4 is ready")


def plan_url(plan: RolloutPlan, action: str = "") -> str:
    if action:
        return reverse("rollouts:plan_action", kwargs={"project_key": "support-assistant", "pk": plan.pk,
                                                       "action": action})
    return reverse("rollouts:plan_detail", kwargs={"project_key": "support-assistant", "pk": plan.pk})


def board_url() -> str:
    return reverse("rollouts:plan_board", kwargs={"project_key": "support-assistant"})


def report(env_key: str, latencies: dict[str, list[float]], minutes_ago: float = 0) -> None:
    """Exposures and latency outcomes per variant, posted to the events API, then aggregated."""
    at = (timezone.now() - datetime.timedelta(minutes=minutes_ago)).isoformat()
    events: list[dict[str, Any]] = []
    for variant, values in latencies.items():
        for i, value in enumerate(values):
            unit = f"{variant}-{uuid.uuid4().hex[:8]}-{i}"
            events.append({"kind": "exposure", "flag": PROFILE, "variant": variant, "served": variant,
                           "unit": unit, "time": at})
            events.append({"kind": "outcome", "metric": "latency_p95", "value": value, "unit": unit, "time": at})
    key = sdk_key_create(environment=environment(env_key), name=f"tests-{uuid.uuid4().hex[:6]}", actor=TEST_ACTOR)[1]
    reset_store(None)  # the store learns new keys at its next poll; this test does not wait for it
    response = call("POST", "/api/v1/events", body={"batch_id": uuid.uuid4().hex, "events": events},
                    headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200 and response.json()["accepted"] == len(events), response.body
    events_aggregate()


def htmx_post(client: Any, url: str, data: dict[str, Any]) -> Any:
    return client.post(url, data, headers={"HX-Request": "true"})


# --- the chart --------------------------------------------------------------------------------


def test_chart__two_variants__a_polyline_each_with_titles_and_escaped_text() -> None:
    start = datetime.datetime(2026, 11, 1, 10, tzinfo=datetime.UTC)
    points = {"base<line>": [Point(start + datetime.timedelta(minutes=10 * i), 100 + i, 5) for i in range(3)],
              "cand": [Point(start + datetime.timedelta(minutes=10 * i), 120 + i, 7) for i in range(3)]}
    svg = str(line_chart(title="Latency <p95>", series=points, start=start,
                         end=start + datetime.timedelta(minutes=30), unit="ms", limit=(150.0, "limit")))
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 6
    assert "base&lt;line&gt;" in svg and "<line>" not in svg.replace("<line ", "")
    assert "Latency &lt;p95&gt;" in svg and 'class="limit"' in svg
    assert "(n=7)" in svg


def test_nice_ticks__cover_the_range_with_round_steps() -> None:
    assert nice_ticks(0, 100) == [0, 25, 50, 75, 100] or nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    ticks = nice_ticks(0.42, 0.58)
    assert ticks[0] <= 0.42 and ticks[-1] >= 0.58 and len(ticks) <= 6


# --- the board --------------------------------------------------------------------------------


def test_board__no_plans__explains_how_to_start(client: Any, catalog: Any) -> None:
    client.force_login(user("auditor"))
    response = client.get(board_url())
    assert response.status_code == 200
    assert b"No rollout in progress" in response.content


def test_board__running_plan__stage_time_guardrails_and_next_step(client: Any, catalog: Any) -> None:
    plan = make_plan(bake=30)
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    report("staging", {BASELINE: [100.0] * 30, CANDIDATE: [300.0] * 30})
    client.force_login(user("pm"))
    html = client.get(board_url()).content.decode()
    row = re.search(rf'<tr data-plan="{plan.pk}">(.*?)</tr>', html, re.S).group(1)
    assert "1 of 4 · Internal users" in row
    assert 'data-status="red"' in row and "breaches at most" in row
    assert "Guardrail breached" in row


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


# --- creating a plan --------------------------------------------------------------------------


def _create_url() -> str:
    return reverse("rollouts:plan_create", kwargs={"project_key": "support-assistant", "flag_key": PROFILE})


def _form_data(client: Any) -> dict[str, Any]:
    """The form as the template fills it in: every input's initial value."""
    html = client.get(_create_url()).content.decode()
    data: dict[str, Any] = {}
    for tag in re.findall(r"<input[^>]*>", html):
        name, value = re.search(r'name="([^"]+)"', tag), re.search(r'value="([^"]*)"', tag)
        if name is None or 'type="radio"' in tag:
            continue
        if 'type="checkbox"' in tag:
            if "checked" in tag:
                data.setdefault(name.group(1), []).append(value.group(1) if value else "on")
        elif value is not None:
            data[name.group(1)] = value.group(1)
    for select, body in re.findall(r'<select name="([^"]+)"[^>]*>(.*?)</select>', html, re.S):
        chosen = re.search(r'<option value="([^"]*)"[^>]*selected', body) or re.search(r'<option value="([^"]*)"', body)
        data[select] = chosen.group(1) if chosen else ""
    data["on_breach"] = "pause"
    return data


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


def test_create__approver_cannot_plan__403(client: Any, catalog: Any) -> None:
    client.force_login(user("pm"))
    assert client.get(_create_url()).status_code == 403


# --- the plan page and its actions ------------------------------------------------------------


def test_page__draft__stages_and_start_button_for_the_owner_only(client: Any, catalog: Any) -> None:
    plan = make_plan()
    client.force_login(user("owner"))
    html = client.get(plan_url(plan)).content.decode()
    assert "1. Internal users" in html and "4. 50 %" in html
    assert "Start: stage 1 (Internal users)" in html and "Discard draft" in html
    client.force_login(user("auditor"))
    html = client.get(plan_url(plan)).content.decode()
    assert "Start: stage 1" not in html and "do not steer this plan" in html


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
    assert response.status_code == 422 and b"This field is required." in response.content
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


def test_stage_needing_approval__request_page_shows_evidence_and_apply_moves_the_plan(
        client: Any, catalog: Any, django_capture_on_commit_callbacks: Any) -> None:
    plan = make_plan(last_needs_approval=True)
    for reason in ("start", "beta", "5 %"):
        (transitions.plan_start if reason == "start" else transitions.plan_advance)(plan=plan, reason=reason, actor=user("owner"))
    report("staging", {BASELINE: [100.0] * 25, CANDIDATE: [105.0] * 25})
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


def test_start__flag_off_in_that_environment__refused_and_nothing_turns_on(catalog: Any) -> None:
    # Given the operator stopped the flag in staging
    staging = flag().targetings.get(environment__key="staging")
    kill_switch.killswitch_flip(targeting=staging, reason="Bad answers", actor=user("operator"))
    plan = make_plan()
    # When the owner starts a plan there
    with pytest.raises(ValidationError, match="is off in Staging: turn it on first"):
        transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    # Then the plan is still a draft and the flag stays off
    staging.refresh_from_db()
    assert (RolloutPlan.objects.get(pk=plan.pk).status, staging.enabled) == ("draft", False)


def test_board__two_plans_judged_in_one_batch__each_keeps_its_own_evidence(client: Any, catalog: Any) -> None:
    red, green = make_plan("staging"), make_plan("development")
    for plan in (red, green):
        transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    report("staging", {BASELINE: [100.0] * 30, CANDIDATE: [300.0] * 30})
    report("development", {BASELINE: [100.0] * 25, CANDIDATE: [101.0] * 25})
    batch = measurement.plans_evidence([RolloutPlan.objects.get(pk=p.pk) for p in (red, green)],
                                 stages_by_plan={p.pk: design.plan_stages(p) for p in (red, green)})
    assert (batch[red.pk]["status"], batch[green.pk]["status"]) == ("red", "green")
    assert batch[red.pk]["variants"][CANDIDATE]["exposures"] == 30
    assert batch[green.pk]["variants"][CANDIDATE]["exposures"] == 25
    assert batch[green.pk]["variants"][CANDIDATE]["metrics"]["latency_p95"]["count"] == 25
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


def test_create__assignment_unit_chosen__plan_buckets_on_it(client: Any, catalog: Any) -> None:
    client.force_login(user("owner"))
    data = {**_form_data(client), "environment": "staging", "candidate": CANDIDATE, "reason": "Ship v4",
            "assignment_unit": " userId "}
    assert client.post(_create_url(), data).status_code == 302
    plan = RolloutPlan.objects.get()
    assert plan.assignment_unit == "userId"
    transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    assert flag().targetings.get(environment__key="staging").assignment_unit == "userId"
