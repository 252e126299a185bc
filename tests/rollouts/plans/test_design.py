"""What a rollout plan is (rollouts/plans/design.py): the seed article's template with guardrails
from the flag, and a plan validated as a whole when created: one open plan per flag and
environment, by its owner or an editor, never for an archived flag."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from flags import services as flag_services
from rollouts.change_control import kill_switch
from rollouts.models import RolloutPlan
from rollouts.plans import design
from tests.rollouts.plans.support import (
    BASELINE,
    CANDIDATE,
    LATENCY,
    environment,
    flag,
    make_plan,
    template_plan,
)
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db


def stage(name: str, segments: list[str], percentage: int = 0, **extra: Any) -> dict[str, Any]:
    return {"name": name, "segments": segments, "percentage": percentage, "min_bake_minutes": 0,
            "guardrails": [LATENCY], **extra}


def test_template__seed_path_with_guardrails_from_the_flag__draft(catalog: Any) -> None:
    # When the owner plans the profile's rollout from the template
    plan = template_plan()
    # Then the five stages of the seed article are there, exposure growing, the last needing approval
    stages = design.plan_stages(plan)
    assert [s.name for s in stages] == ["Internal users", "Beta accounts", "5 % of eligible traffic",
                                        "50 % experiment", "Default behaviour"]
    assert [s.percentage for s in stages] == [0, 0, 5_000, 50_000, 100_000]
    assert stages[0].segments == ["internal_users"] and stages[1].segments == ["internal_users", "beta_accounts"]
    assert [s.needs_approval for s in stages] == [False, False, False, False, True]
    assert all(s.min_bake_minutes > 0 for s in stages[:-1])
    # and guardrails from the flag's guardrail metrics
    assert {"metric": "latency_p95", "kind": "relative_max", "threshold": 1.2, "min_samples": 50} in stages[0].guardrails
    assert {g["metric"] for g in stages[0].guardrails} == set(flag().guardrail_metrics)
    assert (plan.status, plan.stage_index, plan.baseline, plan.assignment_unit) == ("draft", -1, BASELINE, "accountId")
    assert AuditEvent.objects.get(action="plan.created").actor_label.endswith("(owner)")


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"candidate": BASELINE}, "candidate", "must differ"),
    ({"candidate": "gpt_9"}, "candidate", "not a variation"),
    ({"stages": [stage("a", ["martians"])]}, "stages[0].segments", "Unknown segment"),
    ({"stages": [stage("a", [], 5_000), stage("b", [], 1_000)]}, "stages[1].percentage", "only grows"),
    ({"stages": [stage("a", ["beta_accounts"]), stage("b", ["internal_users"])]}, "stages[1].segments",
     "beta_accounts missing"),
    ({"stages": [stage("a", [], 200_000)]}, "stages[0].percentage", "0 to 100000"),
    ({"stages": [stage("a", [], guardrails=[{**LATENCY, "kind": "vibes"}])]}, "stages[0].guardrails[0]", "kind"),
    ({"stages": [stage("a", [], guardrails=[{**LATENCY, "metric": "mood"}])]}, "stages[0].guardrails[0]",
     "metrics registry"),
    ({"stages": []}, "stages", "From 1 to"),
])
def test_create__bad_input__refused_with_the_reason(catalog: Any, changes: dict[str, Any], field: str,
                                                    message: str) -> None:
    arguments = {"flag": flag(), "environment": environment("staging"), "baseline": BASELINE,
                 "candidate": CANDIDATE, "stages": [stage("a", ["internal_users"])], "actor": user("owner"),
                 **changes}
    with pytest.raises(ValidationError) as refused:
        design.plan_create(**arguments)
    assert message in " ".join(refused.value.message_dict[field])
    assert not RolloutPlan.objects.exists()


def test_create__second_open_plan_or_operator__refused(catalog: Any) -> None:
    template_plan()
    with pytest.raises(ValidationError, match="already has an open rollout plan"):
        template_plan()
    with pytest.raises(ValidationError, match="owner or editor"):
        design.plan_from_template(flag=flag(), environment=environment("production"), candidate=CANDIDATE,
                                 actor=user("operator"))


def test_archived_flag__no_new_plan(catalog: Any) -> None:
    for targeting_row in flag().targetings.filter(enabled=True):
        kill_switch.killswitch_flip(targeting=targeting_row, reason="off", actor=user("operator"))
    flag_services.flag_archive(flag=flag(), reason="done", actor=user("owner"))
    with pytest.raises(ValidationError, match="archived"):
        make_plan()
    assert not RolloutPlan.objects.exists()

