"""The `make run` demo's rollout: `seed_rollout_demo` leaves one running plan at its first
stage (idempotently), and `simulate_traffic` reports what the engine serves at that stage."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from flags.demo import seed_demo
from flags.evaluation.engine import compile_snapshot, evaluate
from flags.models import Environment, Flag, SdkKey, Targeting
from flags.snapshot_builder import build_environment_snapshot
from rollouts.change_control import kill_switch, submitting
from rollouts.models import ChangeRequest, ReleaseDecision, RolloutPlan
from rollouts.plans import design, transitions
from telemetry.constants import EventKind
from telemetry.demo import seed_demo_metrics
from telemetry.management.commands.simulate_traffic import support_context
from telemetry.models import Event, EventBatch, Metric
from tests.rollouts.support import user
from tests.servers import database_url_from_settings, free_port, gunicorn

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_caches")]

PROFILE = "support_assistant_profile"
CANDIDATE = "citation_first_v4"






def production() -> Environment:
    return Environment.objects.get(project__key="support-assistant", key="production")


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def seeded_plan() -> RolloutPlan:
    run("seed_rollout_demo")
    return RolloutPlan.objects.get()


# --- seed_rollout_demo ----------------------------------------------------------------------


def test_seed_rollout_demo__run_twice__one_running_plan_at_stage_1_with_audit_rows(catalog: Any) -> None:
    # When the demo's rollout is seeded twice
    first = run("seed_rollout_demo")
    second = run("seed_rollout_demo")
    # Then there is one plan, running at its first stage, by the flag owner
    plan = RolloutPlan.objects.select_related("flag__fallback_variation", "created_by").get()
    flag = Flag.objects.get(key=PROFILE)
    assert (plan.status, plan.stage_index, plan.environment_id) == ("running", 0, production().pk)
    assert (plan.baseline, plan.candidate) == (flag.fallback_variation.key, CANDIDATE)
    assert plan.created_by.username == "owner" and plan.pending_change_request is None
    assert "created and started" in first and "already there" in second
    # with the template's path, bake times a person can wait for, the last stage needing approval
    stages = design.plan_stages(plan)
    assert [s.name for s in stages] == [name for name, *_ in design.TEMPLATE_STAGES]
    assert all(1 <= s.min_bake_minutes <= 2 for s in stages[:-1])
    assert [s.needs_approval for s in stages] == [False] * (len(stages) - 1) + [True]
    guardrails = {(g["metric"], g["kind"], g["threshold"]) for g in stages[0].guardrails}
    assert {("latency_p95", "relative_max", 1.2), ("resolved_without_escalation", "relative_min", 0.9)} <= guardrails
    assert {metric for metric, _, _ in guardrails} <= set(Metric.objects.values_list("key", flat=True))
    # and the traffic of stage 1 is live in production: the plan's rule first
    rules = Targeting.objects.get(flag=flag, environment=production()).rules
    assert rules[0]["id"] == design.plan_rule_id(plan) and rules[0]["serve"] == {"variation": CANDIDATE}
    # and the decision and audit rows are there, once each, with the owner as the actor
    assert list(ReleaseDecision.objects.filter(plan=plan).values_list("action", "actor_label")) == [("start", "owner")]
    for action in ("plan.created", "plan.started"):
        row = AuditEvent.objects.get(action=action, target_id=str(plan.pk))
        assert row.actor.username == "owner" and row.reason
        assert row.user_agent == "manage.py seed_rollout_demo"
    assert not ChangeRequest.objects.exists()


def test_seed_rollout_demo__closed_plan_exists__does_nothing(catalog: Any) -> None:
    plan = seeded_plan()
    transitions.plan_rollback(plan=plan, reason="demo reset", actor=plan.created_by)
    count = AuditEvent.objects.count()
    assert "already there" in run("seed_rollout_demo")
    assert RolloutPlan.objects.count() == 1 and AuditEvent.objects.count() == count


def test_seed_rollout_demo__first_stage_raises_risk__approved_by_pm_and_lead_then_running(catalog: Any) -> None:
    # Given production where nobody gets the candidate yet (the owner removed its rules: that applies at once)
    targeting = Targeting.objects.get(flag__key=PROFILE, environment=production())
    submitting.targeting_change_submit(targeting=targeting, changes={"rules": []}, reason="clean slate",
                                     actor=user("owner"))
    assert Targeting.objects.get(pk=targeting.pk).rules == []
    # When the demo's rollout is seeded
    output = run("seed_rollout_demo")
    # Then stage 1 went through a change request, approved by the demo's approvers, applied by the owner
    change_request = ChangeRequest.objects.get()
    assert change_request.status == "applied" and change_request.requester.username == "owner"
    approvers = set(AuditEvent.objects.filter(action="change_request.approved", change_request_id=change_request.pk)
                    .values_list("actor__username", flat=True))
    assert approvers and approvers <= {"pm", "lead"}
    assert f"CR-{change_request.pk} was approved" in output
    # and the plan runs its first stage: internal users get the candidate
    plan = RolloutPlan.objects.get()
    assert (plan.status, plan.stage_index, plan.pending_change_request) == ("running", 0, None)
    snapshot = compile_snapshot(build_environment_snapshot(production().pk))
    assert evaluate(snapshot, PROFILE, support_context("acct-internal-007")).variant == CANDIDATE
    assert evaluate(snapshot, PROFILE, support_context("acct-00042")).variant == plan.baseline


def test_seed_rollout_demo__flag_killed_in_production__refused_nothing_written(catalog: Any) -> None:
    # Given the operator flipped the kill switch of the demo flag in production
    killed = Targeting.objects.get(flag__key=PROFILE, environment=production())
    kill_switch.killswitch_flip(targeting=killed, reason="incident", actor=user("operator"))
    count = AuditEvent.objects.count()
    # When the demo's rollout is seeded
    err = io.StringIO()
    call_command("seed_rollout_demo", stdout=io.StringIO(), stderr=err)
    # Then it says why it made no plan, and the flag stays off: the demo never undoes a kill switch
    assert "is off in Production" in err.getvalue()
    assert not RolloutPlan.objects.exists() and not ChangeRequest.objects.exists()
    assert not Targeting.objects.get(pk=killed.pk).enabled and AuditEvent.objects.count() == count


def test_seed_rollout_demo__without_the_demo__clear_error(db: None) -> None:
    with pytest.raises(CommandError, match="run seed_demo"):
        run("seed_rollout_demo")
    assert not RolloutPlan.objects.exists()


# --- simulate_traffic -----------------------------------------------------------------------


def stored_exposures() -> list[Event]:
    return list(Event.objects.filter(kind=EventKind.EXPOSURE, environment_id=production().pk))


def test_simulate_traffic__once__exposures_follow_the_plans_stage(catalog: Any) -> None:
    # Given the demo plan at stage 1 (internal users get the candidate)
    plan = seeded_plan()
    # When the simulated app sends one batch through the events API
    output = run("simulate_traffic", "--once", "--in-process", "--seed", "11", "--batch", "120")
    # Then every exposure carries the variant the engine serves that account at this stage
    exposures = stored_exposures()
    assert len(exposures) == 120
    snapshot = compile_snapshot(build_environment_snapshot(production().pk))
    for event in exposures:
        assert event.variant == evaluate(snapshot, PROFILE, support_context(event.unit)).variant, event.unit
    # and internal accounts, which the plan's first stage covers, got the candidate; others did not all
    internal = [e for e in exposures if e.unit.startswith("acct-internal-")]
    assert internal and {e.variant for e in internal} == {plan.candidate}
    assert {e.variant for e in exposures} == {plan.baseline, plan.candidate}
    # and a few cases fell back, the rest were served what they were assigned
    assert 0 < sum(e.served != e.variant for e in exposures) < len(exposures) * 0.2
    # and each case reported its outcomes, attributed to its variant
    outcomes = Event.objects.filter(kind=EventKind.OUTCOME)
    assert outcomes.count() == 5 * len(exposures)
    assert set(outcomes.values_list("variant", flat=True)) == {plan.baseline, plan.candidate}
    batch = EventBatch.objects.get()
    assert batch.accepted == 6 * len(exposures) and batch.rejected == []
    assert "events stored" in output
    # and the run's SDK key was made and revoked, on the audit trail
    key = SdkKey.objects.get(name="traffic simulator")
    assert key.revoked_at is not None
    assert AuditEvent.objects.filter(action__in=["sdk_key.created", "sdk_key.revoked"],
                                     target_id=str(key.pk)).count() == 2


def test_simulate_traffic__regress_latency__candidate_slower_by_the_factor(catalog: Any) -> None:
    seeded_plan()
    latency = Metric.objects.get(key="latency_p95")

    def latencies() -> dict[str, list[float]]:
        by_variant: dict[str, list[float]] = {}
        for variant, value in Event.objects.filter(metric_id=latency.pk).order_by("id").values_list("variant", "value"):
            by_variant.setdefault(variant, []).append(value)
        Event.objects.all().delete()
        return by_variant

    # Given the same simulated cases sent twice, the second time with the candidate's latency doubled
    run("simulate_traffic", "--once", "--in-process", "--seed", "5", "--batch", "60")
    normal = latencies()
    run("simulate_traffic", "--once", "--in-process", "--seed", "5", "--batch", "60", "--regress-latency", "2")
    regressed = latencies()
    # Then the candidate's cases took twice as long, and the baseline's did not change
    assert normal[CANDIDATE] and len(normal[CANDIDATE]) == len(regressed[CANDIDATE])
    assert all(abs(r - 2 * n) <= 0.2 for n, r in zip(normal[CANDIDATE], regressed[CANDIDATE], strict=True))
    assert regressed["baseline_v3"] == normal["baseline_v3"]


def test_simulate_traffic__server_not_up__waits_quietly_and_stores_nothing(catalog: Any) -> None:
    seeded_plan()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    output = run("simulate_traffic", "--url", url, "--seconds", "1.5", "--interval", "0.5", "--batch", "5")
    assert "is not reachable" in output and output.count("is not reachable") == 1
    assert "batches never delivered" in output
    assert not Event.objects.exists()
    with pytest.raises(CommandError, match="Could not deliver"):
        run("simulate_traffic", "--url", url, "--once", "--batch", "5", "--seconds", "1")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_simulate_traffic__over_http_to_the_server__stored() -> None:
    # Given the demo plan, committed, and the console served by gunicorn
    project, _ = seed_demo()
    seed_demo_metrics(project)
    plan = seeded_plan()
    with gunicorn(database_url_from_settings(), workers=1) as base:
        # When the simulated app sends a batch to it over HTTP
        output = run("simulate_traffic", "--url", base, "--once", "--seed", "3", "--batch", "50")
    # Then the server stored it, and the variants are the stage's
    exposures = stored_exposures()
    assert len(exposures) == 50 and "300 events stored" in output
    snapshot = compile_snapshot(build_environment_snapshot(production().pk))
    assert all(e.variant == evaluate(snapshot, PROFILE, support_context(e.unit)).variant for e in exposures)
    assert {e.variant for e in exposures if e.unit.startswith("acct-internal-")} == {plan.candidate}


@pytest.mark.parametrize(("args", "message"), [
    (["--batch", "0"], "--batch"),
    (["--batch", "500"], "--batch"),
    (["--regress-latency", "0"], "must be positive"),
    (["--flag", "no_such_flag"], "No flag"),
])
def test_simulate_traffic__bad_options__refused(catalog: Any, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("simulate_traffic", "--once", "--in-process", *args)
    assert not Event.objects.exists() and not SdkKey.objects.filter(name="traffic simulator").exists()
