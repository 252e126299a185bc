"""The demo's rollout plan: `citation_first_v4` of the support assistant profile, moved stage
by stage in production, with bake times of a minute or two so that a person can walk it
through its stages while `make run` is up. Loaded by `manage.py seed_rollout_demo`, after
`seed_demo` and `seed_metrics`; idempotent. Every write goes through the plan and
change-request services, with a demo user as the actor."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from flags.models import Environment, Flag, Targeting
from rollouts.change_control import applying, approving
from rollouts.models import ChangeRequest, RolloutPlan
from rollouts.plans import design, transitions
from telemetry.models import Metric

DEMO_PROJECT = "support-assistant"
DEMO_FLAG = "support_assistant_profile"
DEMO_ENVIRONMENT = "production"
DEMO_CANDIDATE = "citation_first_v4"
# Minutes each template stage bakes before it may be widened (the template's are hours and days).
DEMO_BAKE_MINUTES = (1, 2, 2, 2, 0)
# The simulated traffic (`simulate_traffic`) reaches 200 candidate cases within about two
# minutes of the first stage; at that size its random noise stays well inside the limits
# below, while a real regression (`--regress-latency 2`) crosses them.
DEMO_MIN_SAMPLES = 200
# Besides the flag's guardrail metrics: the candidate must not resolve fewer cases.
PRIMARY_GUARDRAIL = {"metric": "resolved_without_escalation", "kind": "relative_min", "threshold": 0.9}
CREATE_REASON = ("Demo: citation-first v4 leads answers with citations from reranked verified docs; expose it "
                 "stage by stage with guardrails on latency, corrections, citations, cost and resolution.")
START_REASON = "Demo: start with the internal support team."


class DemoNotLoaded(RuntimeError):
    """The demo catalog or its metrics are missing."""


def demo_stages(flag: Flag) -> list[dict[str, Any]]:
    """The seed template (`design.template_stages`) with demo-sized bake times and sample sizes,
    and a guardrail on the flag's primary metric when the project registers it."""
    stages = design.template_stages(flag)
    primary = ({**PRIMARY_GUARDRAIL, "min_samples": DEMO_MIN_SAMPLES}
               if Metric.objects.filter(project_id=flag.project_id, key=PRIMARY_GUARDRAIL["metric"]).exists()
               else None)
    for stage, bake in zip(stages, DEMO_BAKE_MINUTES, strict=True):
        stage["min_bake_minutes"] = bake
        guardrails = [{**g, "min_samples": DEMO_MIN_SAMPLES} for g in stage["guardrails"]]
        if primary and all(g["metric"] != primary["metric"] for g in guardrails):
            guardrails.append(dict(primary))
        stage["guardrails"] = guardrails
    return stages


def _user(username: str) -> AbstractBaseUser:
    return get_user_model().objects.get(username=username)


def _approve_and_apply(change_request: ChangeRequest) -> None:
    """The demo's approvers say yes and the owner applies, through the real services (the
    same steps the console offers)."""
    for approver in ("pm", "lead"):
        if ChangeRequest.objects.get(pk=change_request.pk).status == ChangeRequest.Status.PENDING:
            approving.change_request_approve(change_request=change_request, actor=_user(approver),
                                            comment="Demo: the first stage is the internal support team only.")
    applying.change_request_apply(change_request=change_request, actor=_user("owner"))


@transaction.atomic
def seed_rollout_demo() -> tuple[RolloutPlan, bool]:
    """The demo plan, running at its first stage: (plan, created). Does nothing when the flag
    already has a plan in production, whatever its status; refuses (ValidationError, nothing
    written) when the plan cannot start there."""
    environment = Environment.objects.filter(project__key=DEMO_PROJECT, key=DEMO_ENVIRONMENT).first()
    flag = Flag.objects.select_related("fallback_variation").filter(project__key=DEMO_PROJECT, key=DEMO_FLAG).first()
    if environment is None or flag is None:
        raise DemoNotLoaded(f"The demo project {DEMO_PROJECT!r} is missing: run seed_demo and seed_metrics "
                                   "first.")
    existing = RolloutPlan.objects.filter(flag=flag, environment=environment).order_by("-id").first()
    if existing is not None:
        return existing, False
    if not Metric.objects.filter(project_id=flag.project_id, key__in=flag.guardrail_metrics).exists():
        raise DemoNotLoaded("The demo's metrics are missing: run seed_metrics first.")
    if not Targeting.objects.filter(flag=flag, environment=environment, enabled=True).exists():
        # Stage 1's targeting turns the flag on: the demo does not undo someone's kill switch.
        raise ValidationError(f"{flag.key} is off in {environment.name} (kill switch or incident mode); turn it "
                              "back on through a change first.")
    owner = _user("owner")
    plan = design.plan_create(flag=flag, environment=environment, baseline=flag.fallback_variation.key,
                             candidate=DEMO_CANDIDATE, stages=demo_stages(flag), actor=owner, reason=CREATE_REASON)
    plan = transitions.plan_start(plan=plan, reason=START_REASON, actor=owner)
    if plan.pending_change_request is not None:
        # Production is governed: had the first stage raised risk there (it does not with the
        # seed's targeting, where internal users already get the candidate), it would wait
        # for approval. The demo approves it so that it opens with a running stage.
        _approve_and_apply(plan.pending_change_request)
        plan = transitions.plan_sync(plan)
    return plan, True
