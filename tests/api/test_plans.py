"""Rollout plans through the management API (api/routers/plans.py): the list and one plan with
its stages, guardrails, open actions and log; every action through the rule transitions.RULES
names and its transition, 202 when a stage waits for approval; a draft plan from stages or the
seed template."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, reset_queries
from django.test.utils import CaptureQueriesContext

from audit.constants import AuditAction
from audit.models import AuditEvent
from audit.services import actor_label
from flags.constants import Role
from flags.services.access_tokens import token_for
from rollouts.models import ChangeRequest, ReleaseDecision, RolloutPlan
from rollouts.plans import design, transitions
from telemetry.demo import seed_demo_metrics
from tests.api.conftest import ApiClient
from tests.factories import grant, make_project
from tests.flags.support import audit_mark
from tests.rollouts.plans.support import BASELINE, CANDIDATE, PROFILE, fresh, make_plan, targeting
from tests.rollouts.support import user

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
PLANS = "/projects/support-assistant/plans"


@pytest.fixture(autouse=True)
def _catalog(demo: Any, fresh_caches: None) -> None:
    """The demo with its metrics registry (guardrails name its metrics), and empty process caches."""
    seed_demo_metrics(demo)


def via(api: ApiClient) -> str:
    """The actor label of an audit row written through `api`'s token."""
    token = token_for(api.token)
    return f"{actor_label(token.user)} via API token {token.name} ({token.prefix}…)"


def audit_row(mark: int, action: str) -> AuditEvent:
    return AuditEvent.objects.get(id__gt=mark, action=action)


def act(api: ApiClient, plan: RolloutPlan, action: str, reason: str = "Looks healthy") -> Any:
    return api.post(f"{PLANS}/{plan.pk}/actions/{action}", {"reason": reason})


def running(stage_index: int = 0, **extra: Any) -> RolloutPlan:
    """A plan of four quick stages in staging, started and advanced to `stage_index` in the console."""
    plan = transitions.plan_start(plan=make_plan(**extra), reason="go", actor=user("owner"))
    for _ in range(stage_index):
        plan = transitions.plan_advance(plan=plan, reason="next", actor=user("owner"))
    return plan


def running_in(environment_key: str) -> RolloutPlan:
    return transitions.plan_start(plan=make_plan(environment_key), reason="go", actor=user("owner"))


# --- reading ---------------------------------------------------------------------------------

def test_list__filters_and_cursor__newest_first(personal_api: Any) -> None:
    draft = make_plan("staging")
    started = running_in("development")
    api = personal_api("auditor", scopes=("read",))
    listed = api.get(PLANS).json()
    assert [item["id"] for item in listed["items"]] == [started.pk, draft.pk]
    first = listed["items"][0]
    assert (first["status"], first["stage_index"], first["current_stage"], first["environment"]) == (
        "running", 0, "Internal users", "development")
    assert first["guardrail_status"] == "amber"  # no samples yet
    assert listed["items"][1]["guardrail_status"] is None and listed["items"][1]["next_step"].startswith("Start")
    assert len(first["stages"]) == 4 and first["stages"][2]["percentage"] == 5_000
    assert [i["id"] for i in api.get(PLANS, {"status": "draft"}).json()["items"]] == [draft.pk]
    assert [i["id"] for i in api.get(PLANS, {"environment": "staging"}).json()["items"]] == [draft.pk]
    assert [i["id"] for i in api.get(PLANS, {"flag": PROFILE}).json()["items"]] == [started.pk, draft.pk]
    page_one = api.get(PLANS, {"limit": 1}).json()
    page_two = api.get(PLANS, {"limit": 1, "cursor": page_one["next_cursor"]}).json()
    assert [i["id"] for i in page_one["items"] + page_two["items"]] == [started.pk, draft.pk]


def test_get__stages_guardrails_actions_and_log(personal_api: Any) -> None:
    plan = running()
    response = personal_api("owner").get(f"{PLANS}/{plan.pk}")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["baseline"], body["candidate"], body["status"]) == (BASELINE, CANDIDATE, "running")
    assert [g["metric"] for g in body["guardrails"]] == ["latency_p95"] and body["guardrails"][0]["status"] == "amber"
    assert {a["action"] for a in body["actions"]} == {"advance", "promote", "pause", "rollback", "investigate"}
    assert [(d["action"], d["actor"], d["from_stage"], d["to_stage"]) for d in body["decisions"]] == [
        ("start", "owner", -1, 0)]
    # what an approver may do on it: mark it for investigation only
    assert [a["action"] for a in personal_api("pm").get(f"{PLANS}/{plan.pk}").json()["actions"]] == ["investigate"]


def test_get__unknown_or_another_projects_token__404(personal_api: Any, service_api: Any) -> None:
    plan = make_plan()
    assert personal_api("owner").get(f"{PLANS}/999999").status_code == 404
    other = make_project("other")
    grant(other, user("admin"), Role.ADMIN)
    outsider = service_api(("read", "write"), project=other)
    assert outsider.get(f"{PLANS}/{plan.pk}").status_code == 404
    assert act(outsider, plan, "start").status_code == 404 and fresh(plan).status == "draft"


# --- acting ----------------------------------------------------------------------------------

def test_start_and_advance__owner_token__stages_live_with_audit_rows(personal_api: Any) -> None:
    plan = make_plan()
    api = personal_api("owner", scopes=("write",))
    mark = audit_mark()
    started = act(api, plan, "start", "v4 is ready for internal users")
    assert started.status_code == 200, started.content
    assert (started.json()["status"], started.json()["stage_index"]) == ("running", 0)
    assert targeting("staging").rules[0]["id"] == f"plan-{plan.pk}"
    assert audit_row(mark, AuditAction.PLAN_STARTED).actor_label == via(api)
    advanced = act(api, plan, "advance", "internal users are happy")
    assert advanced.status_code == 200, advanced.content
    assert advanced.json()["current_stage"] == "Beta accounts"
    assert audit_row(mark, AuditAction.PLAN_ADVANCED).actor_label == via(api)
    assert ReleaseDecision.objects.filter(plan=plan, action="advance").get().reason == "internal users are happy"


def test_advance__stage_needs_approval__202_with_its_change_request(personal_api: Any) -> None:
    # Given a plan at its third stage whose fourth needs approval
    plan = running(2, last_needs_approval=True)
    api = personal_api("owner")
    mark = audit_mark()
    # When the owner advances it
    response = act(api, plan, "advance", "5 % looks healthy")
    # Then the step waits in a change request, and the plan stays where it is
    assert response.status_code == 202, response.content
    change_request = ChangeRequest.objects.get(pk=response.json()["id"])
    assert fresh(plan).pending_change_request == change_request and fresh(plan).stage_index == 2
    assert response.json()["status"] == "pending" and change_request.requester == user("owner")
    assert audit_row(mark, AuditAction.PLAN_ADVANCE_REQUESTED).actor_label == via(api)
    again = act(api, plan, "advance", "still waiting?")
    assert again.status_code == 422 and f"CR-{change_request.pk}" in again.json()["detail"]


def test_pause_and_rollback__operator_with_the_operate_scope__at_once(personal_api: Any) -> None:
    plan = running(1)
    api = personal_api("operator", scopes=("operate",))
    mark = audit_mark()
    paused = act(api, plan, "pause", "Latency spike on beta")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert audit_row(mark, AuditAction.PLAN_PAUSED).actor_label == via(api)
    rolled_back = act(api, plan, "rollback", "Not worth the risk")
    assert rolled_back.status_code == 200 and rolled_back.json()["status"] == "rolled_back"
    assert audit_row(mark, AuditAction.PLAN_ROLLED_BACK).actor_label == via(api)
    assert not any(rule["id"] == f"plan-{plan.pk}" for rule in targeting("staging").rules)


def test_resume_and_promote__owner__completed(personal_api: Any) -> None:
    plan = transitions.plan_pause(plan=running(3), reason="look first", actor=user("operator"))
    api = personal_api("owner")
    mark = audit_mark()
    assert act(api, plan, "resume", "Checked: fine").json()["status"] == "running"
    promoted = act(api, plan, "promote", "50 % is healthy")
    assert promoted.status_code == 200, promoted.content
    assert promoted.json()["status"] == "completed"
    assert targeting("staging").default_serve == {"variation": CANDIDATE}
    assert audit_row(mark, AuditAction.PLAN_RESUMED).actor_label == via(api)
    assert audit_row(mark, AuditAction.PLAN_PROMOTED).actor_label == via(api)


def test_investigate_and_resolve__approver_token__attention_flag(personal_api: Any) -> None:
    plan = running()
    api = personal_api("pm", scopes=("read", "approve"))
    mark = audit_mark()
    marked = act(api, plan, "investigate", "Complaints from beta")
    assert marked.status_code == 200 and marked.json()["needs_attention"] is True
    assert audit_row(mark, AuditAction.PLAN_INVESTIGATED).actor_label == via(api)
    resolved = act(api, plan, "resolve", "Unrelated to the plan")
    assert resolved.status_code == 200 and resolved.json()["needs_attention"] is False
    assert audit_row(mark, AuditAction.PLAN_ATTENTION_CLEARED).actor_label == via(api)


def test_discard__draft__discarded_and_a_started_plan_refused(personal_api: Any) -> None:
    draft, started = make_plan("staging"), running_in("development")
    api = personal_api("owner")
    mark = audit_mark()
    response = act(api, draft, "discard", "Wrong candidate")
    assert response.status_code == 200 and response.json()["status"] == "discarded"
    assert audit_row(mark, AuditAction.PLAN_DISCARDED).actor_label == via(api)
    refused = act(api, started, "discard", "Changed my mind")
    assert refused.status_code == 422 and "only a draft" in refused.json()["detail"]


def test_start__approver_without_steering_role__403_forbidden(personal_api: Any) -> None:
    plan = make_plan()
    response = act(personal_api("pm"), plan, "start")
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert fresh(plan).status == "draft"


def test_pause__approver__403_forbidden(personal_api: Any) -> None:
    plan = running()
    response = act(personal_api("pm"), plan, "pause")
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert fresh(plan).status == "running"


@pytest.mark.parametrize(("scopes", "action"), [(("read", "operate"), "start"), (("read",), "pause"),
                                                (("read",), "investigate")])
def test_action__token_without_its_scope__403_insufficient_scope(personal_api: Any, scopes: tuple[str, ...],
                                                                 action: str) -> None:
    plan = running() if action != "start" else make_plan()
    before = fresh(plan).status
    response = act(personal_api("lead", scopes=scopes), plan, action)
    assert response.status_code == 403 and response.json()["code"] == "insufficient_scope"
    assert fresh(plan).status == before


def test_action__no_reason_or_unknown_action__422(personal_api: Any) -> None:
    plan = make_plan()
    api = personal_api("owner")
    blank = act(api, plan, "start", "  ")
    assert blank.status_code == 422 and blank.json()["errors"][0]["path"] == "reason"
    unknown = act(api, plan, "explode")
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["path"] == "action"
    assert fresh(plan).status == "draft" and not ReleaseDecision.objects.exists()


# --- creating --------------------------------------------------------------------------------

def test_create__from_the_template__draft_with_audit_row(personal_api: Any) -> None:
    api = personal_api("owner", scopes=("write",))
    mark = audit_mark()
    response = api.post(f"/projects/support-assistant/flags/{PROFILE}/plans",
                        {"environment": "staging", "candidate": CANDIDATE, "reason": "Citation-first v4 is ready"})
    assert response.status_code == 201, response.content
    body = response.json()
    plan = RolloutPlan.objects.get(pk=body["id"])
    assert (plan.status, plan.baseline, plan.candidate) == ("draft", BASELINE, CANDIDATE)
    assert [s["name"] for s in body["stages"]] == [s["name"] for s in design.template_stages(plan.flag)]
    # and a breach steps back unless the request says otherwise
    assert plan.on_breach == body["on_breach"] == "step_back"
    row = audit_row(mark, AuditAction.PLAN_CREATED)
    assert row.actor_label == via(api) and row.after["on_breach"] == "step_back"


def test_create__stages_given__draft_with_those_stages(personal_api: Any) -> None:
    stages = [{"name": "Internal", "segments": ["internal_users"]},
              {"name": "Half", "segments": ["internal_users"], "percentage": 50_000, "min_bake_minutes": 30,
               "guardrails": [{"metric": "latency_p95", "kind": "relative_max", "threshold": 1.2}]}]
    response = personal_api("owner").post(f"/projects/support-assistant/flags/{PROFILE}/plans", {
        "environment": "production", "candidate": CANDIDATE, "baseline": BASELINE, "stages": stages,
        "on_breach": "rollback", "reason": "Two quick stages"})
    assert response.status_code == 201, response.content
    plan = RolloutPlan.objects.get(pk=response.json()["id"])
    assert plan.on_breach == "rollback" and [s.percentage for s in design.plan_stages(plan)] == [0, 50_000]
    assert design.plan_stages(plan)[1].guardrails == [
        {"metric": "latency_p95", "kind": "relative_max", "threshold": 1.2, "min_samples": 50}]


@pytest.mark.parametrize(("body", "path"), [
    ({"environment": "moon", "candidate": CANDIDATE, "reason": "x"}, "environment"),
    ({"environment": "staging", "candidate": "nope", "reason": "x"}, "candidate"),
    ({"environment": "staging", "candidate": CANDIDATE, "reason": ""}, "reason"),
    ({"environment": "staging", "candidate": CANDIDATE, "reason": "x",
      "stages": [{"name": "A", "percentage": 5000}, {"name": "B", "percentage": 1000}]}, "stages[1].percentage"),
    ({"environment": "staging", "candidate": CANDIDATE, "reason": "x", "stages": [{"name": "A", "percentage": -1}]},
     "stages.0.percentage"),
    ({"environment": "staging", "candidate": CANDIDATE, "reason": "x", "on_breach": "panic"}, "on_breach"),
])
def test_create__bad_input__422_naming_the_field(personal_api: Any, body: dict[str, Any], path: str) -> None:
    response = personal_api("owner").post(f"/projects/support-assistant/flags/{PROFILE}/plans", body)
    assert response.status_code == 422, response.content
    assert path in [error["path"] for error in response.json()["errors"]]
    assert not RolloutPlan.objects.exists()


def test_create__approver__403_forbidden(personal_api: Any) -> None:
    response = personal_api("pm").post(f"/projects/support-assistant/flags/{PROFILE}/plans",
                                       {"environment": "staging", "candidate": CANDIDATE, "reason": "x"})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert not RolloutPlan.objects.exists()


def test_list__queries__as_many_for_three_plans_as_for_one(personal_api: Any) -> None:
    api = personal_api("owner")
    running_in("development")
    api.get(PLANS)  # the first request of a minute writes the token's cache entries
    reset_queries()
    with CaptureQueriesContext(connection) as one:
        assert len(api.get(PLANS).json()["items"]) == 1
    running_in("staging")
    make_plan("production")
    reset_queries()
    with CaptureQueriesContext(connection) as three:
        assert len(api.get(PLANS).json()["items"]) == 3
    assert own_queries(three) == own_queries(one)


def own_queries(captured: CaptureQueriesContext) -> list[str]:
    """The queries a request made, less the shared cache's (rate limit, last use) and savepoints."""
    return [q["sql"].split(" WHERE ")[0] for q in captured.captured_queries
            if "featureops_cache" not in q["sql"] and "SAVEPOINT" not in q["sql"]]


@pytest.mark.parametrize(("path", "body"), [
    (f"{PLANS}/0/actions/start", {"reason": "go"}),
    (f"{PLANS}/1/actions/start", {"reason": "nul \x00 inside"}),
    (f"/projects/support-assistant/flags/{PROFILE}/plans",
     {"environment": "staging", "candidate": CANDIDATE, "reason": "x", "stages": [{"name": "nul \x00"}]}),
    (f"/projects/support-assistant/flags/{PROFILE}/plans",
     {"environment": "staging", "candidate": CANDIDATE, "reason": "x",
      "stages": [{"name": "A", "guardrails": [{"metric": "latency_p95", "kind": "absolute_max",
                                               "threshold": 1e12}]}]}),
])
def test_input_no_database_can_take__422_not_a_server_error(personal_api: Any, path: str, body: Any) -> None:
    response = personal_api("owner").post(path, body)
    assert response.status_code == 422 and response["Content-Type"] == "application/problem+json"
    assert not RolloutPlan.objects.exists()
