"""The split's sample-ratio check in a plan's evidence (rollouts/plans/measurement.py), from
exposures posted to the events API: among the units that reached the flag, the share whose hash
bucket falls on the candidate's side of the stage's split is tested against its weight.

What each unit is served comes from the real engine (the staging snapshot), as an application
would get it over OFREP; the applications below report those exposures faithfully, or lose
some of the candidate's (a variant crashing before it reports: a broken split)."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from django.utils import timezone

from flags.evaluation.engine import compile_snapshot, evaluate
from flags.services import sdk_key_create
from flags.snapshot_builder import build_environment_snapshot
from flags.snapshot_store import reset_store
from rollouts.models import RolloutPlan
from rollouts.plans import measurement, pages, transitions
from telemetry.services import events_aggregate
from tests.factories import TEST_ACTOR
from tests.ofrep_client import call
from tests.rollouts.plans.support import BASELINE, CANDIDATE, PROFILE, environment, make_plan
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db


def at_fifty_percent() -> RolloutPlan:
    """A staging plan advanced to its 50 % stage (internal users and beta accounts get the
    candidate; everyone else is split 50/50)."""
    plan = transitions.plan_start(plan=make_plan("staging"), reason="go", actor=user("owner"))
    for _ in range(3):
        plan = transitions.plan_advance(plan=plan, reason="next", actor=user("owner"))
    assert (plan.stage_index, plan.status) == (3, "running")
    return plan


def served_to(contexts: list[dict[str, Any]]) -> list[str]:
    snapshot = compile_snapshot(build_environment_snapshot(environment("staging").pk))
    return [evaluate(snapshot, PROFILE, context).variant for context in contexts]


def post_exposures(pairs: list[tuple[str, str]]) -> None:
    key = sdk_key_create(environment=environment("staging"), name=f"srm-{uuid.uuid4().hex[:6]}", actor=TEST_ACTOR)[1]
    reset_store(None)
    now = timezone.now().isoformat()
    events = [{"kind": "exposure", "flag": PROFILE, "variant": variant, "served": variant, "unit": unit, "time": now}
              for unit, variant in pairs]
    for first in range(0, len(events), 1000):
        response = call("POST", "/api/v1/events", body={"batch_id": uuid.uuid4().hex, "events": events[first:first + 1000]},
                        headers={"Authorization": f"Bearer {key}"})
        assert response.status == 200, response.body
    events_aggregate()


def accounts(count: int, prefix: str = "acct-srm") -> list[dict[str, Any]]:
    return [{"targetingKey": f"{prefix}-{i}", "accountId": f"{prefix}-{i}"} for i in range(count)]


def entered_a_minute_ago(plan: RolloutPlan) -> RolloutPlan:
    RolloutPlan.objects.filter(pk=plan.pk).update(stage_entered_at=timezone.now() - datetime.timedelta(minutes=1))
    return RolloutPlan.objects.get(pk=plan.pk)


def test_sample_ratio__faithful_split__looks_as_configured(catalog: Any) -> None:
    # Given a plan at its 50 % stage and 800 ordinary accounts, each reported as served
    plan = entered_a_minute_ago(at_fifty_percent())
    contexts = accounts(800)
    variants = served_to(contexts)
    assert 300 < variants.count(CANDIDATE) < 500  # the engine's split, roughly half
    post_exposures([(c["accountId"], v) for c, v in zip(contexts, variants, strict=True)])
    # When the plan's evidence is read
    evidence = measurement.plan_evidence(plan)
    # Then the split looks as configured: every unit counted, on the side it was served from
    check = evidence["sample_ratio"]
    assert check["units"] == 800 and check["observed"] == {BASELINE: variants.count(BASELINE),
                                                           CANDIDATE: variants.count(CANDIDATE)}
    assert check["expected_share"] == {BASELINE: 0.5, CANDIDATE: 0.5}
    assert not check["mismatch"] and check["p_value"] >= 0.001 and check["assigned_against_split"] == 0
    assert not evidence["untrustworthy"] and "looks as configured" in check["message"]


def test_sample_ratio__candidate_exposures_lost__mismatch_marks_the_evidence_untrustworthy(catalog: Any) -> None:
    # Given the same stage, and an application that loses the exposures of 40 % of the units
    # served the candidate (its candidate path fails before it reports)
    plan = entered_a_minute_ago(at_fifty_percent())
    contexts = accounts(800)
    variants = served_to(contexts)
    kept, dropped = [], 0
    for context, variant in zip(contexts, variants, strict=True):
        if variant == CANDIDATE and dropped < 0.4 * variants.count(CANDIDATE):
            dropped += 1
            continue
        kept.append((context["accountId"], variant))
    post_exposures(kept)
    # When the evidence is read
    evidence = measurement.plan_evidence(plan)
    # Then the candidate's side is short of its 50 %: a sample ratio mismatch, p < 0.001
    check = evidence["sample_ratio"]
    assert check["observed"][CANDIDATE] == variants.count(CANDIDATE) - dropped
    assert check["mismatch"] and check["p_value"] < 0.001
    assert "sample ratio mismatch" in check["message"] and "cannot be trusted" in check["message"]
    # and the stage's evidence is untrustworthy: amber whatever its guardrails say
    assert evidence["untrustworthy"] and evidence["status"] == "amber"
    # and the plan page offers Advance and Promote blocked, saying why
    actions = {a.action: a for a in pages.plan_page(RolloutPlan.objects.get(pk=plan.pk), user("owner"))["actions"]}
    assert actions["promote"].blocked.startswith("Sample ratio mismatch: ")
    assert "cannot be trusted" in actions["promote"].blocked


def test_sample_ratio__segment_members_get_the_candidate__still_no_mismatch(catalog: Any) -> None:
    # Given 50 % of the stage's units are internal agents, whom the plan's segment rule gives the
    # candidate whatever their bucket: three quarters of the units get the candidate
    plan = entered_a_minute_ago(at_fifty_percent())
    contexts = accounts(400) + [{**c, "email": f"agent{i}@support.example.com"}
                                for i, c in enumerate(accounts(400, "acct-agent-srm"))]
    variants = served_to(contexts)
    assert variants[400:] == [CANDIDATE] * 400
    post_exposures([(c["accountId"], v) for c, v in zip(contexts, variants, strict=True)])
    # When the evidence is read
    check = measurement.plan_evidence(plan)["sample_ratio"]
    # Then the hash sides still follow the split's weights (counting assignments would have cried
    # wolf at 75/25)
    assert variants.count(CANDIDATE) / len(variants) > 0.7
    assert not check["mismatch"] and check["units"] == 800


def test_sample_ratio__stage_without_a_split__not_tested(catalog: Any) -> None:
    # Given a plan in its first stage (internal users only: no percentage split)
    plan = entered_a_minute_ago(transitions.plan_start(plan=make_plan("staging"), reason="go", actor=user("owner")))
    contexts = accounts(100)
    post_exposures([(c["accountId"], v) for c, v in zip(contexts, served_to(contexts), strict=True)])
    # Then there is nothing to test
    evidence = measurement.plan_evidence(plan)
    assert evidence["sample_ratio"] is None and not evidence["untrustworthy"]


def test_sample_ratio__page_reads_what_the_sweep_kept__fresh_reads_the_units(catalog: Any) -> None:
    # Given a faithful split checked by the sweep (fresh), kept in the cache
    plan = entered_a_minute_ago(at_fifty_percent())
    contexts = accounts(400)
    variants = served_to(contexts)
    post_exposures([(c["accountId"], v) for c, v in zip(contexts, variants, strict=True)])
    assert measurement.plan_evidence(plan)["sample_ratio"]["units"] == 400
    # When 600 more baseline-side units arrive, none of the candidate's (a broken split)
    more = accounts(1600, "acct-more")
    post_exposures([(c["accountId"], v) for c, v in zip(more, served_to(more), strict=True) if v == BASELINE][:600])
    # Then the page's read (not fresh) is what the sweep kept, without reading the units
    kept = measurement.plan_evidence(plan, fresh_sample_ratio=False)["sample_ratio"]
    assert kept["units"] == 400 and not kept["mismatch"]
    # and the next fresh check sees the mismatch, and keeps it for the page
    assert measurement.plan_evidence(plan)["sample_ratio"]["mismatch"]
    assert measurement.plan_evidence(plan, fresh_sample_ratio=False)["sample_ratio"]["units"] == 1000
