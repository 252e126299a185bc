"""One entry per kind of change: the policy decides whether a change applies now or opens
a change request. Targeting in one environment; flag-wide edits (variation values, the
fallback, the JSON Schema, risk ranks); segment edits. `preview_targeting_change` is the same
decision as a read. Flags are written only through flags.services.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from audit.constants import AuditAction
from audit.services import Actor, record
from audit.validators import check_text_limit
from flags import services as flag_services
from flags.models import Environment, Flag, Segment, Targeting
from flags.permissions import EDIT_SEGMENTS, holders_of, steers
from flags.served_state.guard import (
    Overrides,
    served_states,
)
from flags.served_state.policy import (
    Classification,
    PolicyReason,
    classify_flag_change,
    classify_served_change,
)
from notifications.services import notify
from rollouts.actors import require_reason, user_of
from rollouts.change_control.approval_policy import governed_policy, policy_for
from rollouts.change_control.approving import approval_shortfall
from rollouts.change_control.binding import (
    bind,
    classify,
    flag_content,
    segment_content,
    served_pair,
    targeting_content,
)
from rollouts.change_control.follow_ups import operator_rollback_follow_up
from rollouts.change_control.notices import notify_approvers
from rollouts.change_control.wording import change_request_url, describe, label
from rollouts.diff import DiffLine
from rollouts.models import ChangeRequest


@dataclass(frozen=True)
class Preview:
    """What submitting a proposal would do, shown before it is submitted."""

    applies_now: bool
    required_approvals: int
    reasons: tuple[PolicyReason, ...]
    lines: list[DiffLine]
    governed: bool


def preview_targeting_change(*, targeting: Targeting, changes: dict[str, Any]) -> Preview:
    """A read: validates the proposal (ValidationError as submit would raise it) and says
    whether it applies at once or how many approvals it needs, and why."""
    targeting = Targeting.objects.select_related("flag__fallback_variation", "environment__project").get(pk=targeting.pk)
    proposed = flag_services.targeting_proposal(targeting=targeting, changes=changes)
    lines = describe(targeting.flag, targeting_content(targeting), proposed)
    if not targeting.environment.is_governed:
        return Preview(True, 0, (), lines, governed=False)
    classification = classify(targeting, proposed)
    if not classification.raises_risk:
        return Preview(True, 0, (), lines, governed=True)
    policy = policy_for(targeting.environment)
    required = policy.required_approvals(escalation=classification.escalation)
    return Preview(False, required, classification.reasons, lines, governed=True)


@transaction.atomic
def targeting_change_submit(*, targeting: Targeting, changes: dict[str, Any], reason: str = "",
                            actor: Actor, expected_version: int | None = None,
                            force_request: bool = False) -> Targeting | ChangeRequest:
    """Apply now, or open a change request, as the environment's policy says. Outside a
    governed environment, and for changes that raise no risk, the change applies at once.
    `expected_version` refuses a proposal made against a state that has since moved.
    `force_request` opens a change request whatever the policy says (a rollout stage that
    needs approval, in any environment)."""
    check_text_limit("reason", reason)  # also where no reason is required
    targeting = Targeting.objects.select_related("flag__fallback_variation", "environment__project").get(pk=targeting.pk)
    if expected_version is not None and targeting.version != expected_version:
        raise flag_services.ConflictError(
            f"This targeting changed since you opened it (now version {targeting.version}). Reload and try again.")
    proposed = flag_services.targeting_proposal(targeting=targeting, changes=changes)
    operator_only = isinstance(actor, AbstractBaseUser) and not steers(actor, targeting.flag)
    if force_request:
        if operator_only:
            raise ValidationError("A change that needs approval is proposed by the flag's owner or an editor.")
        forced = PolicyReason("approval_required", "This rollout stage needs approval whatever the policy says.")
        classification = classify(targeting, proposed)
        return _change_request_open(targeting=targeting, proposed=proposed,
                                    classification=Classification((*classification.reasons, forced)),
                                    reason=require_reason(reason), actor=actor)
    if not targeting.environment.is_governed:
        if operator_only:
            raise ValidationError(f"In {targeting.environment.name} targeting is edited by the flag's owner or an "
                                  "editor; operators use the kill switch.")
        return flag_services.targeting_update(targeting=targeting, actor=actor, reason=reason,
                                              expected_version=expected_version, **changes)
    classification = classify(targeting, proposed)
    if not classification.raises_risk:
        updated = flag_services.targeting_update(targeting=targeting, actor=actor, reason=require_reason(reason),
                                                 expected_version=expected_version, **changes)
        if operator_only and updated.version != targeting.version:
            operator_rollback_follow_up(targeting, reason, actor)
        return updated
    if operator_only:
        raise ValidationError("Operators move traffic towards the fallback only; this change raises risk "
                              f"({classification.reasons[0].text}). The flag's owner or an editor can propose it.")
    return _change_request_open(targeting=targeting, proposed=proposed, classification=classification,
                                reason=require_reason(reason), actor=actor)


def _change_request_open(*, targeting: Targeting, proposed: dict[str, Any], classification: Classification,
                         reason: str, actor: Actor) -> ChangeRequest:
    policy = policy_for(targeting.environment)
    required = policy.required_approvals(escalation=classification.escalation)
    change_request = ChangeRequest(
        project=targeting.environment.project, flag=targeting.flag, environment=targeting.environment,
        base_version=targeting.version, base_state=targeting_content(targeting), proposed=proposed,
        reasons=[asdict(r) for r in classification.reasons],
        escalation=classification.escalation, required_approvals=required, requester=user_of(actor),
        requester_label=str(actor if not isinstance(actor, AbstractBaseUser) else actor.get_username()),
        reason=reason,
    )
    pair = served_pair(targeting, proposed)
    bind(change_request, {pair[1].key: pair[1]} if pair else {})
    return _opened(change_request, actor,
                   f"Requested a change to {targeting.flag.key} in {targeting.environment.name}")


def _opened(change_request: ChangeRequest, actor: Actor, summary: str) -> ChangeRequest:
    """Save a new request, record it, and tell the approvers, or, when not enough of them
    can approve it (the requester never counts), the project admins, who can grant the role."""
    change_request.full_clean()
    change_request.save()
    required = change_request.required_approvals
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_CREATED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"proposed": change_request.proposed, "reasons": change_request.reasons,
                  "required_approvals": required, "served_hashes": change_request.served_hashes},
           reason=change_request.reason, change_request_id=change_request.pk,
           summary=f"{summary}: {required} approval{'s' if required > 1 else ''} needed")
    notify_approvers(change_request, f"Approval needed: {label(change_request)}",
                     f"{change_request.requester_label} asks: {change_request.reason}\n"
                     + "\n".join(f"- {r['text']}" for r in change_request.reasons))
    shortfall = approval_shortfall(change_request)
    if shortfall:
        notify(recipients=list(holders_of(change_request.project, "manage_members")), kind="change_request.stuck",
               title=f"Cannot be approved: {label(change_request)}", body=shortfall,
               url=change_request_url(change_request))
    return change_request


def _flag_overrides(flag: Flag, proposed: dict[str, Any]) -> Overrides:
    """A flag-wide proposal as served-state overrides: what every governed environment would
    serve once it is applied."""
    current = {key: (value, rank) for key, value, rank in flag.variations.values_list("key", "value", "risk_rank")}
    variations = {key: (value, current[key][1]) for key, value in proposed.get("variations", {}).items()
                  if key in current}
    for key, rank in proposed.get("risk_ranks", {}).items():
        if key in current:
            variations[key] = (variations.get(key, current[key])[0], rank)
    overrides = Overrides(variations={flag.pk: variations})
    if "fallback_variation" in proposed:
        overrides.fallback[flag.pk] = proposed["fallback_variation"]
    if "json_schema" in proposed:
        overrides.json_schema[flag.pk] = proposed["json_schema"]
    return overrides


def _classify_flag(flag: Flag, proposed: dict[str, Any], served: set[str]) -> Classification:
    current = flag_content(flag, proposed)
    value_changes = {key: (current["variations"].get(key), value)
                     for key, value in proposed.get("variations", {}).items()}
    fallback = proposed.get("fallback_variation")
    rank_changes = {key: (current["risk_ranks"].get(key), rank) for key, rank in proposed.get("risk_ranks", {}).items()}
    return classify_flag_change(
        value_changes=value_changes, served_variations=served,
        fallback_change=(current["fallback_variation"], fallback) if fallback else None,
        schema_changed="json_schema" in proposed and proposed["json_schema"] != current["json_schema"],
        value_type_changed=False,  # the value type is not editable (flags.services.flag_update)
        rank_changes=rank_changes,
    )


@transaction.atomic
def flag_change_submit(*, flag: Flag, actor: AbstractBaseUser, reason: str = "",
                       variation_values: dict[str, Any] | None = None, fallback_variation_key: str | None = None,
                       json_schema: Any = None, change_schema: bool = False,
                       risk_ranks: dict[str, int] | None = None) -> ChangeRequest | None:
    """The flag-wide parts of an edit. When the flag serves in a governed environment and the
    edit changes the value of a variation served there, the fallback, or the schema, it
    becomes one change request; otherwise nothing is held and the caller applies it (returns
    None). Validated as the flags services would validate it, before anything is held."""
    flag = Flag.objects.select_for_update(of=("self",)).select_related("fallback_variation", "project").get(pk=flag.pk)
    proposed: dict[str, Any] = {}
    if variation_values:
        proposed["variations"] = dict(variation_values)
    if fallback_variation_key is not None and fallback_variation_key != flag.fallback_variation.key:
        proposed["fallback_variation"] = fallback_variation_key
    if change_schema and json_schema != flag.json_schema:
        proposed["json_schema"] = json_schema
    if risk_ranks:
        for key, rank in risk_ranks.items():
            if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= 32767:
                raise ValidationError({"risk_rank": f"The risk rank of {key} must be a whole number from 0 (safest)."})
        current = dict(flag.variations.values_list("key", "risk_rank"))
        # Every rank the edit changes travels with a request if one is opened, so what is
        # approved (the served state, ranks included) is what applying produces.
        changed = {key: rank for key, rank in risk_ranks.items() if key in current and rank != current[key]}
        if changed:
            proposed["risk_ranks"] = changed
    served = flag_services.governed_served_variations(flag)
    if not proposed or not served:
        return None
    flag_services.flag_change_validate(flag=flag, **{k: v for k, v in proposed.items() if k != "risk_ranks"})
    classification = _classify_flag(flag, proposed, served)
    if not classification.raises_risk:
        return None
    # Sized by what each governed environment would serve: a new fallback riskier than
    # anything served there is a risk escalation, like any other.
    overrides = _flag_overrides(flag, proposed)
    now = served_states(project_id=flag.project_id, flag_ids=[flag.pk])
    results = served_states(project_id=flag.project_id, flag_ids=[flag.pk], overrides=overrides)
    escalations = [PolicyReason(r.code, f"{was.environment_name}: {r.text}", escalation=True)
                   for key, was in now.items()
                   for r in classify_served_change(before=was.state, after=results[key].state).reasons
                   if r.escalation]
    reasons = (*classification.reasons, *escalations)
    escalation = any(r.escalation for r in reasons)
    policy = governed_policy(flag.project)
    required = policy.required_approvals(escalation=escalation)
    reason = require_reason(reason)
    base_state = flag_content(flag, proposed)
    change_request = ChangeRequest(
        project=flag.project, flag=flag, kind=ChangeRequest.Kind.FLAG, environment=None,
        base_version=flag.version, base_state=base_state, proposed=proposed,
        reasons=[asdict(r) for r in reasons],
        escalation=escalation, required_approvals=required, requester=actor,
        requester_label=actor.get_username(), reason=reason,
    )
    bind(change_request, results)
    return _opened(change_request, actor, f"Requested a flag-wide change to {flag.key}")


@transaction.atomic
def variation_change_submit(*, variation: Any, actor: AbstractBaseUser, reason: str = "",
                            **changes: Any) -> tuple[Any, ChangeRequest | None]:
    """A variation edit. A new value for a variation served in a governed environment waits
    in a change request; the name, description and risk rank save at once."""
    check_text_limit("reason", reason)
    flag = variation.flag
    values = {variation.key: changes["value"]} if "value" in changes and changes["value"] != variation.value else None
    ranks = {variation.key: changes["risk_rank"]} if "risk_rank" in changes else None
    change_request = flag_change_submit(flag=flag, actor=actor, reason=reason, variation_values=values,
                                        risk_ranks=ranks) if values or ranks else None
    held = set()
    if change_request is not None:
        held |= {"value"} if "variations" in change_request.proposed else set()
        held |= {"risk_rank"} if "risk_ranks" in change_request.proposed else set()
    rest = {k: v for k, v in changes.items() if k not in held}
    variation = flag_services.variation_update(variation=variation, actor=actor, reason=reason, **rest)
    return variation, change_request


@transaction.atomic
def contract_change_submit(*, flag: Flag, actor: AbstractBaseUser, reason: str = "", expected_version: int | None = None,
                           fallback_variation_key: str | None = None, tags: Any = None,
                           **changes: Any) -> tuple[Flag, ChangeRequest | None]:
    """A contract edit. A new fallback or JSON Schema for a flag served in a governed
    environment waits in a change request; the rest of the contract saves at once."""
    check_text_limit("reason", reason)
    current = Flag.objects.get(pk=flag.pk)
    if expected_version is not None and current.version != expected_version:
        raise flag_services.ConflictError("Someone changed this flag since you opened it. Reload and try again.")
    change_request = flag_change_submit(flag=flag, actor=actor, reason=reason,
                                        fallback_variation_key=fallback_variation_key,
                                        json_schema=changes.get("json_schema"), change_schema="json_schema" in changes)
    if change_request is not None:
        if "fallback_variation" in change_request.proposed:
            fallback_variation_key = None
        if "json_schema" in change_request.proposed:
            changes.pop("json_schema")
    flag = flag_services.flag_update(flag=flag, actor=actor, expected_version=expected_version,
                                     fallback_variation_key=fallback_variation_key, tags=tags, reason=reason, **changes)
    return flag, change_request


@transaction.atomic
def segment_change_submit(*, segment: Segment, changes: dict[str, Any], actor: AbstractBaseUser, reason: str = "",
                          expected_version: int | None = None) -> Segment | ChangeRequest:
    """A segment edit. When no governed environment whose rules reach the segment would take
    on risk (a widened audience, people falling through to something riskier), it saves at
    once; otherwise the whole edit waits in one change request, bound to what each of those
    environments would serve."""
    check_text_limit("reason", reason)
    segment = Segment.objects.select_related("project").get(pk=segment.pk)
    project = segment.project
    EDIT_SEGMENTS.require(actor, project)
    if expected_version is not None and segment.version != expected_version:
        raise flag_services.ConflictError("Someone changed this segment since you opened it. Reload and try again.")
    proposed = flag_services.segment_proposal(segment=segment, changes=changes)
    before = served_states(project_id=project.pk, segment_key=segment.key)
    after = served_states(project_id=project.pk, segment_key=segment.key,
                          overrides=Overrides(segments={segment.key: proposed}))
    reasons: list[PolicyReason] = []
    environment_ids = set()
    for key, was in before.items():
        classification = classify_served_change(before=was.state, after=after[key].state)
        reasons += [PolicyReason(r.code, f"{was.flag_key} in {was.environment_name}: {r.text}", r.escalation)
                    for r in classification.reasons]
        if classification.raises_risk:
            environment_ids.add(was.environment_id)
    if not reasons:
        return flag_services.segment_update(segment=segment, actor=actor, expected_version=expected_version,
                                            reason=reason, **changes)
    escalation = any(r.escalation for r in reasons)
    required = max(policy_for(environment).required_approvals(escalation=escalation)
                   for environment in Environment.objects.filter(pk__in=environment_ids))
    change_request = ChangeRequest(
        project=project, segment=segment, flag=None, kind=ChangeRequest.Kind.SEGMENT, environment=None,
        base_version=segment.version, base_state=segment_content(segment), proposed=proposed,
        reasons=[asdict(r) for r in reasons], escalation=escalation, required_approvals=required,
        requester=actor, requester_label=actor.get_username(), reason=require_reason(reason),
    )
    bind(change_request, after)
    return _opened(change_request, actor, f"Requested a change to segment {segment.key}")
