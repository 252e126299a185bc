"""The approval policy: each environment's numbers (how many approvals a risk escalation
and other risky changes need, when undecided requests expire), the strictest governed policy
for flag-wide changes, and how project admins change it. How many approvals a change needs is
`ApprovalPolicy.required_approvals` (rollouts/models.py), the one place that rule is written.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from audit.constants import AuditAction
from audit.services import record
from flags.models import Environment, Project
from flags.permissions import CHANGE_APPROVAL_POLICIES
from rollouts.models import ApprovalPolicy


def policy_for(environment: Environment) -> ApprovalPolicy:
    """The environment's policy, or the defaults (2 approvals for escalations, 1 otherwise)
    when no one has set one. A read: it creates nothing."""
    existing = ApprovalPolicy.objects.filter(environment=environment).first()
    return existing or ApprovalPolicy(environment=environment)


def governed_policy(project: Project) -> ApprovalPolicy:
    """Flag-wide changes reach every environment: the strictest governed policy applies."""
    policies = [policy_for(env) for env in project.environments.filter(is_governed=True)]
    if not policies:
        return ApprovalPolicy()
    return max(policies, key=lambda p: (p.approvals_for_escalation, p.approvals_otherwise))


POLICY_LIMITS = {"approvals_for_escalation": (1, 10), "approvals_otherwise": (1, 10), "expire_after_days": (1, 90)}


@transaction.atomic
def approval_policy_update(*, environment: Environment, actor: AbstractBaseUser, **values: Any) -> ApprovalPolicy:
    """Project admins set how many approvals an environment needs and when requests expire.
    Requests already open keep the number they were opened with."""
    CHANGE_APPROVAL_POLICIES.require(actor, environment.project)
    unknown = set(values) - set(POLICY_LIMITS)
    if unknown:
        raise ValidationError({name: "Unknown policy field." for name in sorted(unknown)})
    errors = {}
    for name, value in values.items():
        low, high = POLICY_LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            errors[name] = f"A whole number from {low} to {high}."
    if errors:
        raise ValidationError(errors)
    Environment.objects.select_for_update().get(pk=environment.pk)
    policy = policy_for(environment)
    before = {name: getattr(policy, name) for name in POLICY_LIMITS}
    for name, value in values.items():
        setattr(policy, name, value)
    if policy.approvals_otherwise > policy.approvals_for_escalation:
        raise ValidationError({"approvals_otherwise": "Risk escalations need at least as many approvals as other "
                                                      "changes."})
    after = {name: getattr(policy, name) for name in POLICY_LIMITS}
    if after == before and policy.pk:
        return policy
    policy.save()
    record(actor=actor, action=AuditAction.APPROVAL_POLICY_UPDATED, target=environment, project=environment.project,
           environment=environment, before=before, after=after,
           summary=f"Approval policy of {environment.name}: {after['approvals_for_escalation']} for risk escalations, "
                   f"{after['approvals_otherwise']} otherwise, expiry after {after['expire_after_days']} days")
    return policy
