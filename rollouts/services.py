"""Change control services: the policy decides whether a targeting change in an environment
applies now or becomes a change request; requests are approved by others, applied under row
locks against their base version, scheduled, cancelled or expired. Every transition locks
the request, re-checks its status and writes its audit row in the same transaction.
Flags are written only through flags.services.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from audit.chain import canonical_json
from audit.constants import AuditAction
from audit.diff import diff as audit_diff
from audit.services import Actor, SystemActor, record
from audit.validators import check_text_limit
from flags import services as flag_services
from flags.constants import BehaviorSurface
from flags.models import Environment, Flag, Project, Segment, Targeting
from flags.permissions import can_edit_catalog, has_project_permission, holders_of
from flags.served_state.guard import (
    Authorization,
    GovernanceError,
    Overrides,
    ServedState,
    governed_write,
    pair_key,
    served_states,
)
from flags.served_state.policy import (
    Classification,
    PolicyReason,
    classify_flag_change,
    classify_served_change,
    classify_targeting_change,
)
from flags.snapshots import targeting_state
from notifications.services import notify
from rollouts.diff import DiffLine, describe_flag_change, describe_segment_change, describe_targeting_change
from rollouts.models import Approval, ApprovalPolicy, ChangeRequest, ChangeRequestComment, FollowUp, Incident

Status = ChangeRequest.Status
SCHEDULER = SystemActor("change-scheduler")
EXPIRER = SystemActor("change-expiry")


def policy_for(environment: Environment) -> ApprovalPolicy:
    """The environment's policy, or the defaults (2 approvals for escalations, 1 otherwise)
    when no one has set one. A read: it creates nothing."""
    existing = ApprovalPolicy.objects.filter(environment=environment).first()
    return existing or ApprovalPolicy(environment=environment)


def _state(targeting: Targeting) -> dict[str, Any]:
    return {k: v for k, v in targeting_state(targeting).items() if k != "version"}


def served_pair(targeting: Targeting, proposed: dict[str, Any]) -> tuple[ServedState, ServedState] | None:
    """What a governed environment serves now, and would serve with `proposed` as its
    targeting (None outside governed environments)."""
    key = pair_key(targeting.flag_id, targeting.environment_id)
    project_id = targeting.environment.project_id
    before = served_states(project_id=project_id, flag_ids=[targeting.flag_id]).get(key)
    after = served_states(project_id=project_id, flag_ids=[targeting.flag_id],
                          overrides=Overrides(targeting={key: proposed})).get(key)
    return (before, after) if before is not None and after is not None else None


def classify(targeting: Targeting, proposed: dict[str, Any]) -> Classification:
    """In a governed environment the whole served state is compared (targeting, reached
    segments, values, fallback); elsewhere only the targeting, for rollout stages that ask
    for approval whatever the environment."""
    pair = served_pair(targeting, proposed)
    if pair is not None:
        return classify_served_change(before=pair[0].state, after=pair[1].state)
    flag = targeting.flag
    ranks = dict(flag.variations.values_list("key", "risk_rank"))
    return classify_targeting_change(current=_state(targeting), proposed=proposed, risk_ranks=ranks,
                                     fallback=flag.fallback_variation.key)


@dataclass(frozen=True)
class Preview:
    """What submitting a proposal would do, shown before it is submitted."""

    applies_now: bool
    required_approvals: int
    reasons: tuple[PolicyReason, ...]
    lines: list[DiffLine]
    governed: bool


def describe(flag: Flag, base: dict[str, Any], proposed: dict[str, Any]) -> list[DiffLine]:
    ranks = dict(flag.variations.values_list("key", "risk_rank"))
    return describe_targeting_change(base=base, proposed=proposed, risk_ranks=ranks,
                                     fallback=flag.fallback_variation.key, surface=flag.behavior_surface)


def preview_targeting_change(*, targeting: Targeting, changes: dict[str, Any]) -> Preview:
    """A read: validates the proposal (ValidationError as submit would raise it) and says
    whether it applies at once or how many approvals it needs, and why."""
    targeting = Targeting.objects.select_related("flag__fallback_variation", "environment__project").get(pk=targeting.pk)
    proposed = flag_services.targeting_proposal(targeting=targeting, changes=changes)
    lines = describe(targeting.flag, _state(targeting), proposed)
    if not targeting.environment.is_governed:
        return Preview(True, 0, (), lines, governed=False)
    classification = classify(targeting, proposed)
    if not classification.raises_risk:
        return Preview(True, 0, (), lines, governed=True)
    policy = policy_for(targeting.environment)
    required = policy.approvals_for_escalation if classification.escalation else policy.approvals_otherwise
    return Preview(False, required, classification.reasons, lines, governed=True)


def _diff_hash(base_version: int, proposed: dict[str, Any], variations: dict[str, Any] | None = None,
               served: dict[str, str] | None = None) -> str:
    """What an approval binds: the proposal, and the served state it produces in each
    governed environment."""
    payload = {"base": base_version, "proposed": proposed, "variations": variations or {}, "served": served or {}}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def _bind(change_request: ChangeRequest, results: dict[str, ServedState]) -> None:
    """Bind a request to the served states it produces; approvals bind its diff hash."""
    change_request.served_hashes = {key: served.hash for key, served in results.items()}
    change_request.served_states = {key: served.state for key, served in results.items()}
    change_request.diff_hash = _diff_hash(change_request.base_version, change_request.proposed,
                                          change_request.variations_at_request, change_request.served_hashes)


def _authorization(change_request: ChangeRequest) -> Authorization:
    return Authorization(change_request.served_hashes, f"CR-{change_request.pk}")


def _user(actor: Actor) -> AbstractBaseUser | None:
    return actor if isinstance(actor, AbstractBaseUser) else None


def _require_reason(reason: str) -> str:
    if not reason or not reason.strip():
        raise ValidationError({"reason": "Say why: the reason stays with the change in the audit trail."})
    check_text_limit("reason", reason)
    return reason.strip()


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
    operator_only = isinstance(actor, AbstractBaseUser) and not may_propose(actor, targeting.flag)
    if force_request:
        if operator_only:
            raise ValidationError("A change that needs approval is proposed by the flag's owner or an editor.")
        forced = PolicyReason("approval_required", "This rollout stage needs approval whatever the policy says.")
        classification = classify(targeting, proposed)
        return _change_request_open(targeting=targeting, proposed=proposed,
                                    classification=Classification((*classification.reasons, forced)),
                                    reason=_require_reason(reason), actor=actor)
    if not targeting.environment.is_governed:
        if operator_only:
            raise ValidationError(f"In {targeting.environment.name} targeting is edited by the flag's owner or an "
                                  "editor; operators use the kill switch.")
        return flag_services.targeting_update(targeting=targeting, actor=actor, reason=reason,
                                              expected_version=expected_version, **changes)
    classification = classify(targeting, proposed)
    if not classification.raises_risk:
        updated = flag_services.targeting_update(targeting=targeting, actor=actor, reason=_require_reason(reason),
                                                 expected_version=expected_version, **changes)
        if operator_only and updated.version != targeting.version:
            _operator_rollback_follow_up(targeting, reason, actor)
        return updated
    if operator_only:
        raise ValidationError("Operators move traffic towards the fallback only; this change raises risk "
                              f"({classification.reasons[0].text}). The flag's owner or an editor can propose it.")
    return _change_request_open(targeting=targeting, proposed=proposed, classification=classification,
                                reason=_require_reason(reason), actor=actor)


def may_propose(user: AbstractBaseUser, flag: Flag) -> bool:
    """Flag owners and editors propose any change; operators only move traffic to the fallback."""
    return (has_project_permission(user, flag.project, "propose_change")
            or can_edit_catalog(user, flag.project, flag))


def _operator_rollback_follow_up(targeting: Targeting, reason: str, actor: AbstractBaseUser) -> None:
    """An operator's roll-back (a split back to the baseline, a rule removed) applies at once;
    like the kill switch it tells the owner and approvers and leaves a follow-up."""
    flag, environment = targeting.flag, targeting.environment
    title = f"Rolled back: {flag.key} moved towards its fallback in {environment.name}"
    _open_follow_up(project=environment.project, environment=environment, kind=FollowUp.Kind.ROLLBACK, title=title,
                    reason=reason.strip(), actor=actor, flag=flag)
    notify(recipients=[u for u in _owners_and_approvers(environment.project, [flag]) if u.pk != actor.pk],
           kind="rollback.applied", title=title, body=f"{actor.get_username()}: {reason.strip()}", url=_flag_url(flag))


def _change_request_open(*, targeting: Targeting, proposed: dict[str, Any], classification: Classification,
                         reason: str, actor: Actor) -> ChangeRequest:
    policy = policy_for(targeting.environment)
    required = policy.approvals_for_escalation if classification.escalation else policy.approvals_otherwise
    change_request = ChangeRequest(
        project=targeting.environment.project, flag=targeting.flag, environment=targeting.environment,
        base_version=targeting.version, base_state=_state(targeting), proposed=proposed,
        reasons=[asdict(r) for r in classification.reasons],
        escalation=classification.escalation, required_approvals=required, requester=_user(actor),
        requester_label=str(actor if not isinstance(actor, AbstractBaseUser) else actor.get_username()),
        reason=reason,
    )
    pair = served_pair(targeting, proposed)
    _bind(change_request, {pair[1].key: pair[1]} if pair else {})
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
    _notify_approvers(change_request, f"Approval needed: {_label(change_request)}",
                      f"{change_request.requester_label} asks: {change_request.reason}\n"
                      + "\n".join(f"- {r['text']}" for r in change_request.reasons))
    shortfall = approval_shortfall(change_request)
    if shortfall:
        notify(recipients=list(holders_of(change_request.project, "manage_members")), kind="change_request.stuck",
               title=f"Cannot be approved: {_label(change_request)}", body=shortfall,
               url=change_request_url(change_request))
    return change_request


def eligible_approvers(change_request: ChangeRequest) -> list[AbstractBaseUser]:
    """Who can approve this request: active holders of the approver role, not its requester."""
    return list(holders_of(change_request.project, "approve_change").exclude(pk=change_request.requester_id))


def approval_shortfall(change_request: ChangeRequest) -> str:
    """Why this request can never reach its approvals, or "" when it can."""
    if change_request.status not in (Status.PENDING,):
        return ""
    eligible = len(eligible_approvers(change_request))
    if eligible >= change_request.required_approvals:
        return ""
    return (f"It needs {change_request.required_approvals} approvals, but only {eligible} "
            f"{'person holds' if eligible == 1 else 'people hold'} the approver role in {change_request.project.name} "
            "besides the requester. A project admin can grant the role on the Members page.")


def change_request_url(change_request: ChangeRequest) -> str:
    return reverse("rollouts:change_request", kwargs={"project_key": change_request.project.key,
                                                      "pk": change_request.pk})


def _label(change_request: ChangeRequest) -> str:
    return f"CR-{change_request.pk} {change_request.subject} in {change_request.where}"


def _notify_approvers(change_request: ChangeRequest, title: str, body: str) -> None:
    approvers = [u for u in holders_of(change_request.project, "approve_change") if u.pk != change_request.requester_id]
    notify(recipients=approvers, kind="change_request.waiting", title=title, body=body, url=change_request_url(change_request))


def _notify_requester(change_request: ChangeRequest, title: str, body: str = "") -> None:
    notify(recipients=[change_request.requester], kind="change_request.decided", title=title,
           body=body or change_request.reason, url=change_request_url(change_request))


# --- flag-wide changes: variation values, the fallback, the JSON Schema ----------------------


def _governed_policy(project: Project) -> ApprovalPolicy:
    """Flag-wide changes reach every environment: the strictest governed policy applies."""
    policies = [policy_for(env) for env in project.environments.filter(is_governed=True)]
    if not policies:
        return ApprovalPolicy()
    return max(policies, key=lambda p: (p.approvals_for_escalation, p.approvals_otherwise))


def _flag_state(flag: Flag, parts: dict[str, Any]) -> dict[str, Any]:
    """The current values of the parts a flag-wide proposal touches."""
    state: dict[str, Any] = {}
    if "variations" in parts:
        values = dict(flag.variations.filter(key__in=list(parts["variations"])).values_list("key", "value"))
        state["variations"] = {key: values.get(key) for key in parts["variations"]}
    if "fallback_variation" in parts:
        state["fallback_variation"] = flag.fallback_variation.key
    if "json_schema" in parts:
        state["json_schema"] = flag.json_schema
    if "risk_ranks" in parts:
        ranks = dict(flag.variations.filter(key__in=list(parts["risk_ranks"])).values_list("key", "risk_rank"))
        state["risk_ranks"] = {key: ranks.get(key) for key in parts["risk_ranks"]}
    return state


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
    current = _flag_state(flag, proposed)
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


def describe_flag(flag: Flag, base: dict[str, Any], proposed: dict[str, Any]) -> list[DiffLine]:
    ranks = dict(flag.variations.values_list("key", "risk_rank"))
    governed = [t.environment.name for t in flag.targetings.select_related("environment")
                .filter(environment__is_governed=True)]
    return describe_flag_change(base=base, proposed=proposed, risk_ranks=ranks,
                                served=flag_services.governed_served_variations(flag), governed_names=governed)


def describe_request(change_request: ChangeRequest) -> list[DiffLine]:
    """The request's proposal in words, for its page."""
    if change_request.kind == ChangeRequest.Kind.FLAG:
        return describe_flag(change_request.flag, change_request.base_state, change_request.proposed)
    if change_request.kind == ChangeRequest.Kind.SEGMENT:
        return describe_segment_change(key=change_request.segment.key, base=change_request.base_state,
                                       proposed=change_request.proposed)
    return describe(change_request.flag, change_request.base_state, change_request.proposed)


def describe_conflict(change_request: ChangeRequest) -> list[DiffLine]:
    """What changed between the request's base and the state that refused it."""
    conflict = change_request.conflict
    if not conflict:
        return []
    if conflict.get("served"):
        return describe_served_conflict(change_request)
    if change_request.kind == ChangeRequest.Kind.FLAG:
        return describe_flag(change_request.flag, conflict["base"], conflict["current"])
    if change_request.kind == ChangeRequest.Kind.SEGMENT:
        return describe_segment_change(key=change_request.segment.key, base=conflict["base"],
                                       proposed=conflict["current"])
    return describe(change_request.flag, conflict["base"], conflict["current"])


def describe_served_conflict(change_request: ChangeRequest) -> list[DiffLine]:
    """What moved between the served state approvers approved and the one apply found, path
    by path ("variations.cached_answer.value: 'a' → 'b'", "segments.pilot_accounts.rules…")."""
    lines = []
    for key, current in (change_request.conflict or {}).get("served", {}).items():
        approved = change_request.served_states.get(key, {})
        for change in audit_diff(approved, current)[:20]:
            lines.append(DiffLine(f"{change.path}: {change.before or '(none)'} → {change.after or '(none)'}"))
    return lines


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
    policy = _governed_policy(flag.project)
    required = policy.approvals_for_escalation if escalation else policy.approvals_otherwise
    reason = _require_reason(reason)
    base_state = _flag_state(flag, proposed)
    change_request = ChangeRequest(
        project=flag.project, flag=flag, kind=ChangeRequest.Kind.FLAG, environment=None,
        base_version=flag.version, base_state=base_state, proposed=proposed,
        reasons=[asdict(r) for r in reasons],
        escalation=escalation, required_approvals=required, requester=actor,
        requester_label=actor.get_username(), reason=reason,
    )
    _bind(change_request, results)
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


def _segment_content(segment: Segment) -> dict[str, Any]:
    return {name: getattr(segment, name) for name in flag_services.SEGMENT_EDITABLE_FIELDS}


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
    if not can_edit_catalog(actor, project):
        raise ValidationError("Editing segments needs the flag owner or editor role in this project.")
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
    required = max(policy.approvals_for_escalation if escalation else policy.approvals_otherwise
                   for policy in map(policy_for, Environment.objects.filter(pk__in=environment_ids)))
    change_request = ChangeRequest(
        project=project, segment=segment, flag=None, kind=ChangeRequest.Kind.SEGMENT, environment=None,
        base_version=segment.version, base_state=_segment_content(segment), proposed=proposed,
        reasons=[asdict(r) for r in reasons], escalation=escalation, required_approvals=required,
        requester=actor, requester_label=actor.get_username(), reason=_require_reason(reason),
    )
    _bind(change_request, after)
    return _opened(change_request, actor, f"Requested a change to segment {segment.key}")


def may_carry(user: AbstractBaseUser, change_request: ChangeRequest) -> bool:
    """Who applies or schedules an approved request: the flag's owner or an editor (for a
    segment, an editor)."""
    if change_request.flag_id:
        return may_propose(user, change_request.flag)
    return (has_project_permission(user, change_request.project, "propose_change")
            or can_edit_catalog(user, change_request.project))


class _BaseMoved(Exception):
    """What the request replaces moved since it was made: a conflict, found under the locks."""

    def __init__(self, base: Any, current: Any, current_version: int, summary: str):
        super().__init__(summary)
        self.base, self.current, self.current_version, self.summary = base, current, current_version, summary


def _write_flag_change(change_request: ChangeRequest, scope: Any, actor: Actor) -> None:
    scope.touch_flags(project_id=change_request.project_id, flag_ids=[change_request.flag_id])
    flag = Flag.objects.select_related("fallback_variation", "project").get(pk=change_request.flag_id)
    current = _flag_state(flag, change_request.proposed)
    if current != change_request.base_state:
        raise _BaseMoved(change_request.base_state, current, flag.version,
                         "Not applied: what the request changes was changed since it was made")
    reason = f"CR-{change_request.pk}: {change_request.reason}"
    proposed = change_request.proposed
    for key, value in proposed.get("variations", {}).items():
        flag_services.variation_update(variation=flag.variations.get(key=key), actor=actor, value=value,
                                       reason=reason, change_request_id=change_request.pk)
    for key, rank in proposed.get("risk_ranks", {}).items():
        flag_services.variation_update(variation=flag.variations.get(key=key), actor=actor, risk_rank=rank,
                                       reason=reason, change_request_id=change_request.pk)
    contract = {"json_schema": proposed["json_schema"]} if "json_schema" in proposed else {}
    if contract or "fallback_variation" in proposed:
        flag_services.flag_update(flag=flag, actor=actor, fallback_variation_key=proposed.get("fallback_variation"),
                                  reason=reason, change_request_id=change_request.pk, **contract)


def _write_targeting_change(change_request: ChangeRequest, scope: Any, actor: Actor) -> None:
    scope.touch_flags(project_id=change_request.project_id, flag_ids=[change_request.flag_id])
    targeting = Targeting.objects.select_for_update().get(flag=change_request.flag,
                                                          environment=change_request.environment)
    if targeting.version != change_request.base_version:
        raise _BaseMoved(change_request.base_state, _state(targeting), targeting.version,
                         f"Not applied: the targeting moved from version {change_request.base_version} "
                         f"to {targeting.version} since the request was made")
    flag_services.targeting_update(
        targeting=targeting, actor=actor, expected_version=change_request.base_version,
        reason=f"CR-{change_request.pk}: {change_request.reason}", change_request_id=change_request.pk,
        **change_request.proposed,
    )


def _write_segment_change(change_request: ChangeRequest, scope: Any, actor: Actor) -> None:
    segment = change_request.segment
    scope.touch_segment(project_id=change_request.project_id, segment_key=segment.key)
    segment = Segment.objects.get(pk=segment.pk)
    if segment.version != change_request.base_version:
        raise _BaseMoved(change_request.base_state, _segment_content(segment), segment.version,
                         f"Not applied: the segment moved from version {change_request.base_version} "
                         f"to {segment.version} since the request was made")
    flag_services.segment_update(segment=segment, actor=actor, expected_version=change_request.base_version,
                                 reason=f"CR-{change_request.pk}: {change_request.reason}",
                                 change_request_id=change_request.pk, **change_request.proposed)


_WRITERS = {
    ChangeRequest.Kind.TARGETING: _write_targeting_change,
    ChangeRequest.Kind.FLAG: _write_flag_change,
    ChangeRequest.Kind.SEGMENT: _write_segment_change,
}


def _apply_under_guard(change_request: ChangeRequest, actor: Actor, count: int) -> ChangeRequest:
    """Write the request's change with its approval as the only authorization, under the
    served-state guard's locks. A moved base, or a served state that differs from the one
    approved (a segment widened, a value edited, in between), leaves nothing written and the
    request conflicted, showing what moved."""
    if not change_request.served_hashes and change_request.kind != ChangeRequest.Kind.TARGETING:
        raise ValidationError("This request was approved before approvals bound what production serves: "
                              "cancel it and submit it again.")
    try:
        with transaction.atomic(), governed_write(authorization=_authorization(change_request)) as scope:
            _WRITERS[change_request.kind](change_request, scope, actor)
    except _BaseMoved as moved:
        return _conflicted(change_request, actor, base=moved.base, current=moved.current,
                           current_version=moved.current_version, summary=moved.summary)
    except GovernanceError as refused:
        moved_in = "; ".join(f"{r.flag_key} in {r.environment_name}" for r in refused.refusals)
        current = {pair_key(r.after.flag_id, r.after.environment_id): r.after.state for r in refused.refusals}
        return _conflicted(change_request, actor, base=change_request.base_state, current=change_request.base_state,
                           current_version=change_request.base_version, served=current,
                           summary=f"Not applied: what {moved_in} would serve differs from what was approved")
    return _applied(change_request, actor, count)


def _plans_follow(change_request: ChangeRequest) -> None:
    """A rollout plan waiting on this request moves (or forgets it) right after the commit,
    not at the next guardrail sweep (which would also do it)."""
    def follow() -> None:
        from rollouts.plans import sync_plans_waiting_on  # plans build on this module

        sync_plans_waiting_on(change_request.pk)

    transaction.on_commit(follow, robust=True)


def _pause_plans(flag_ids: list[int], environment: Environment, actor: Actor, reason: str) -> None:
    """Stopping flags stops their rollouts too (in the same transaction)."""
    from rollouts.plans import pause_stopped_plans  # plans build on this module

    pause_stopped_plans(flag_ids=flag_ids, environment_id=environment.pk, actor=actor, reason=reason)


def _conflicted(change_request: ChangeRequest, actor: Actor, *, base: Any, current: Any, current_version: int,
                summary: str, served: dict[str, Any] | None = None) -> ChangeRequest:
    """`served`: the served states the apply would have produced, where they differ from
    the approved ones (`served_states`); the page lists what moved between the two."""
    change_request.status = Status.CONFLICTED
    change_request.conflict = {"base_version": change_request.base_version, "current_version": current_version,
                               "base": base, "current": current, "summary": summary}
    if served:
        change_request.conflict["served"] = served
    change_request.save(update_fields=["status", "conflict", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_CONFLICTED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after=change_request.conflict, change_request_id=change_request.pk, summary=summary)
    _notify_requester(change_request, f"Conflicted: {_label(change_request)}",
                      "What the request changes was changed since it was made; nothing was applied. "
                      "Open a new request from the current state.")
    _plans_follow(change_request)
    return change_request


def _applied(change_request: ChangeRequest, actor: Actor, count: int) -> ChangeRequest:
    change_request.status = Status.APPLIED
    change_request.applied_at = timezone.now()
    change_request.save(update_fields=["status", "applied_at", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_APPLIED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"status": Status.APPLIED, "approvals": count}, change_request_id=change_request.pk)
    if not isinstance(actor, AbstractBaseUser) or actor.pk != change_request.requester_id:
        _notify_requester(change_request, f"Applied: {_label(change_request)}",
                          f"Applied by {actor.get_username() if isinstance(actor, AbstractBaseUser) else actor}.")
    _plans_follow(change_request)
    return change_request


def _locked(change_request: ChangeRequest) -> ChangeRequest:
    return (ChangeRequest.objects.select_for_update(of=("self",))
            .select_related("project", "flag", "environment").get(pk=change_request.pk))


def valid_approvals(change_request: ChangeRequest) -> int:
    """Approvals of the current version, by people other than the requester who still hold
    the approver role."""
    approver_ids = set(
        change_request.approvals.filter(decision=Approval.Decision.APPROVE, diff_hash=change_request.diff_hash,
                                        approver__is_active=True)
        .exclude(approver_id=change_request.requester_id).values_list("approver_id", flat=True))
    return holders_of(change_request.project, "approve_change").filter(pk__in=approver_ids).count()


@transaction.atomic
def change_request_approve(*, change_request: ChangeRequest, actor: AbstractBaseUser, comment: str = "") -> ChangeRequest:
    check_text_limit("comment", comment)
    change_request = _locked(change_request)
    if change_request.status not in (Status.PENDING, Status.APPROVED):
        raise ValidationError(f"This request is {change_request.get_status_display().lower()}; it can no longer be approved.")
    if change_request.requester_id == actor.pk:
        raise ValidationError("You cannot approve your own request: a second person must.")
    if not has_project_permission(actor, change_request.project, "approve_change"):
        raise ValidationError("Approving needs the approver role in this project.")
    if change_request.approvals.filter(approver=actor, diff_hash=change_request.diff_hash).exists():
        raise ValidationError("You have already decided on this version of the request.")
    if change_request.status == Status.APPROVED and valid_approvals(change_request) >= change_request.required_approvals:
        raise ValidationError("This request already has the approvals it needs.")
    Approval.objects.create(change_request=change_request, approver=actor, decision=Approval.Decision.APPROVE,
                            comment=comment, diff_hash=change_request.diff_hash)
    count = valid_approvals(change_request)
    if count >= change_request.required_approvals and change_request.status == Status.PENDING:
        change_request.status = Status.APPROVED
        change_request.decided_at = timezone.now()
        change_request.save(update_fields=["status", "decided_at", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_APPROVED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"approvals": count, "required": change_request.required_approvals, "status": change_request.status},
           reason=comment, change_request_id=change_request.pk)
    if change_request.status == Status.APPROVED:
        _notify_requester(change_request, f"Approved: {_label(change_request)}",
                          f"{count} of {change_request.required_approvals} approvals. Apply it or schedule it.")
    return change_request


@transaction.atomic
def change_request_reject(*, change_request: ChangeRequest, actor: AbstractBaseUser, comment: str = "") -> ChangeRequest:
    """Any rejection closes the request."""
    check_text_limit("comment", comment)
    change_request = _locked(change_request)
    if change_request.status not in ChangeRequest.OPEN:
        raise ValidationError(f"This request is {change_request.get_status_display().lower()}; it can no longer be rejected.")
    if change_request.requester_id == actor.pk:
        raise ValidationError("Cancel your own request instead of rejecting it.")
    if not has_project_permission(actor, change_request.project, "approve_change"):
        raise ValidationError("Rejecting needs the approver role in this project.")
    Approval.objects.create(change_request=change_request, approver=actor, decision=Approval.Decision.REJECT,
                            comment=comment, diff_hash=change_request.diff_hash)
    change_request.status = Status.REJECTED
    change_request.decided_at = timezone.now()
    change_request.save(update_fields=["status", "decided_at", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_REJECTED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"status": Status.REJECTED}, reason=comment, change_request_id=change_request.pk)
    _notify_requester(change_request, f"Rejected: {_label(change_request)}",
                      f"Rejected by {actor.get_username()}: {comment or 'no comment'}")
    _plans_follow(change_request)
    return change_request


@transaction.atomic
def change_request_edit(*, change_request: ChangeRequest, changes: dict[str, Any], reason: str,
                        actor: AbstractBaseUser) -> ChangeRequest:
    """The requester revises the proposal. Its hash changes, so earlier approvals no longer
    count, and the policy classifies it afresh."""
    change_request = _locked(change_request)
    if change_request.requester_id != actor.pk:
        raise ValidationError("Only the requester can edit a request.")
    if change_request.kind != ChangeRequest.Kind.TARGETING:
        raise ValidationError("Only a targeting request can be edited: cancel this one and make the edit again.")
    if change_request.status not in ChangeRequest.OPEN:
        raise ValidationError(f"This request is {change_request.get_status_display().lower()}; it can no longer be edited.")
    base = Targeting(flag=change_request.flag, environment=change_request.environment,
                     **{**change_request.base_state, "version": change_request.base_version})
    proposed = flag_services.targeting_proposal(targeting=base, changes={**change_request.proposed, **changes})
    flag = change_request.flag
    ranks = dict(flag.variations.values_list("key", "risk_rank"))
    classification = classify_targeting_change(current=change_request.base_state, proposed=proposed,
                                               risk_ranks=ranks, fallback=flag.fallback_variation.key)
    if not classification.raises_risk:
        raise ValidationError("This version raises no risk: cancel the request and make the change directly.")
    policy = policy_for(change_request.environment)
    before = {"proposed": change_request.proposed, "status": change_request.status}
    change_request.proposed = proposed
    targeting = Targeting.objects.select_related("environment").get(flag=flag, environment=change_request.environment)
    pair = served_pair(targeting, proposed)
    _bind(change_request, {pair[1].key: pair[1]} if pair else {})
    change_request.reasons = [asdict(r) for r in classification.reasons]
    change_request.escalation = classification.escalation
    change_request.required_approvals = (policy.approvals_for_escalation if classification.escalation
                                         else policy.approvals_otherwise)
    change_request.status = Status.PENDING
    change_request.scheduled_for = None
    change_request.reason = _require_reason(reason)
    change_request.save()
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_EDITED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=flag,
           before=before, after={"proposed": proposed, "status": Status.PENDING}, reason=reason,
           change_request_id=change_request.pk, summary="Edited the request: earlier approvals no longer count")
    _notify_approvers(change_request, f"Edited, approval needed again: {_label(change_request)}",
                      f"{change_request.requester_label} revised the request: {change_request.reason}")
    return change_request


@transaction.atomic
def change_request_apply(*, change_request: ChangeRequest, actor: Actor) -> ChangeRequest:
    """Apply an approved request, if its base version is still current. Otherwise the request
    becomes conflicted, showing what changed in between; nothing is applied."""
    change_request = _locked(change_request)
    due = change_request.status == Status.SCHEDULED and change_request.scheduled_for <= timezone.now()
    if change_request.status != Status.APPROVED and not due:
        raise ValidationError(f"Only an approved request can be applied; this one is "
                              f"{change_request.get_status_display().lower()}.")
    if isinstance(actor, AbstractBaseUser) and not may_carry(actor, change_request):
        raise ValidationError("Applying needs the flag owner or editor role (a requester who lost it cannot).")
    count = valid_approvals(change_request)
    if count < change_request.required_approvals:
        raise ValidationError(f"{count} of {change_request.required_approvals} approvals are still valid "
                              "(an approver may have lost the role).")
    return _apply_under_guard(change_request, actor, count)


@transaction.atomic
def change_request_schedule(*, change_request: ChangeRequest, when: datetime.datetime,
                            actor: AbstractBaseUser) -> ChangeRequest:
    change_request = _locked(change_request)
    if not may_carry(actor, change_request):
        raise ValidationError("Scheduling needs the flag owner or editor role.")
    if change_request.status != Status.APPROVED:
        raise ValidationError("Only an approved request can be scheduled.")
    if when <= timezone.now():
        raise ValidationError({"scheduled_for": "Pick a time in the future."})
    change_request.status = Status.SCHEDULED
    change_request.scheduled_for = when
    change_request.save(update_fields=["status", "scheduled_for", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_SCHEDULED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"scheduled_for": when.isoformat()}, change_request_id=change_request.pk)
    return change_request


@transaction.atomic
def change_request_cancel(*, change_request: ChangeRequest, actor: AbstractBaseUser, reason: str = "") -> ChangeRequest:
    check_text_limit("reason", reason)
    change_request = _locked(change_request)
    if change_request.requester_id != actor.pk:
        raise ValidationError("Only the requester can cancel a request.")
    if change_request.status not in (*ChangeRequest.OPEN, Status.CONFLICTED):
        raise ValidationError(f"This request is {change_request.get_status_display().lower()} already.")
    change_request.status = Status.CANCELLED
    change_request.save(update_fields=["status", "updated_at"])
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_CANCELLED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"status": Status.CANCELLED}, reason=reason, change_request_id=change_request.pk)
    _plans_follow(change_request)
    return change_request


def apply_due_change_requests() -> int:
    """The scheduler's sweep: each due request in its own transaction, idempotent through the
    status check under the row lock. Returns how many were applied. Scheduled requests whose
    approvals lapsed (an approver lost the role) first go back to waiting, visibly."""
    for change_request in ChangeRequest.objects.filter(status=Status.SCHEDULED).only("pk"):
        _unschedule_if_lapsed(change_request)
    applied = 0
    due = ChangeRequest.objects.filter(status=Status.SCHEDULED, scheduled_for__lte=timezone.now())
    for change_request in due.only("pk"):
        try:
            result = change_request_apply(change_request=change_request, actor=SCHEDULER)
        except ValidationError:
            continue  # no longer due (applied by another sweep) or no longer valid: left as it is
        applied += result.status == Status.APPLIED
    return applied


@transaction.atomic
def _unschedule_if_lapsed(change_request: ChangeRequest) -> bool:
    change_request = _locked(change_request)
    if change_request.status != Status.SCHEDULED:
        return False
    count = valid_approvals(change_request)
    if count >= change_request.required_approvals:
        return False
    when = change_request.scheduled_for
    change_request.status = Status.PENDING
    change_request.scheduled_for = None
    change_request.decided_at = None
    change_request.save(update_fields=["status", "scheduled_for", "decided_at", "updated_at"])
    text = (f"{count} of {change_request.required_approvals} approvals are still valid (an approver lost the role "
            f"or left), so it will not be applied at {when:%Y-%m-%d %H:%M} UTC. It waits for approvals again.")
    record(actor=SCHEDULER, action=AuditAction.CHANGE_REQUEST_UNSCHEDULED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           before={"status": Status.SCHEDULED, "scheduled_for": when.isoformat()},
           after={"status": Status.PENDING, "approvals": count}, change_request_id=change_request.pk, summary=text)
    _notify_requester(change_request, f"No longer scheduled: {_label(change_request)}", text)
    return True


def expire_undecided_change_requests() -> int:
    """Pending requests older than their environment's expiry become expired."""
    expired = 0
    now = timezone.now()
    for change_request in ChangeRequest.objects.filter(status=Status.PENDING).select_related("environment", "project"):
        policy = (policy_for(change_request.environment) if change_request.environment_id
                  else _governed_policy(change_request.project))
        days = policy.expire_after_days
        if change_request.created_at <= now - datetime.timedelta(days=days):
            expired += _expire(change_request, days)
    return expired


@transaction.atomic
def _expire(change_request: ChangeRequest, days: int) -> int:
    change_request = _locked(change_request)
    if change_request.status != Status.PENDING:
        return 0
    change_request.status = Status.EXPIRED
    change_request.save(update_fields=["status", "updated_at"])
    record(actor=EXPIRER, action=AuditAction.CHANGE_REQUEST_EXPIRED, target=change_request,
           project=change_request.project, environment=change_request.environment, flag=change_request.flag,
           after={"status": Status.EXPIRED}, change_request_id=change_request.pk,
           summary=f"Expired after {days} days without a decision")
    _notify_requester(change_request, f"Expired: {_label(change_request)}",
                      f"No decision within {days} days. Submit it again if it is still wanted.")
    _plans_follow(change_request)
    return 1


@transaction.atomic
def change_request_comment(*, change_request: ChangeRequest, body: str, actor: AbstractBaseUser) -> ChangeRequestComment:
    """Requester, approvers, editors and operators discuss a request; comments never change it."""
    change_request = _locked(change_request)
    project = change_request.project
    if not (actor.pk == change_request.requester_id
            or participation(actor, project)):
        raise ValidationError("Commenting needs a role that takes part in changes (editor, approver or operator).")
    body = (body or "").strip()
    if not body:
        raise ValidationError({"body": "Write a comment first."})
    check_text_limit("body", body, limit="comment")
    comment = ChangeRequestComment.objects.create(change_request=change_request, author=actor,
                                                  author_label=actor.get_username(), body=body)
    record(actor=actor, action=AuditAction.CHANGE_REQUEST_COMMENTED, target=change_request, project=project,
           environment=change_request.environment, flag=change_request.flag, after={"comment": body},
           change_request_id=change_request.pk)
    if actor.pk != change_request.requester_id:
        _notify_requester(change_request, f"New comment on {_label(change_request)}", f"{actor.get_username()}: {body}")
    return comment


PARTICIPANT_PERMISSIONS = ("approve_change", "propose_change", "flip_killswitch")


def participation(user: AbstractBaseUser, project: Project) -> set[str]:
    """The permissions by which someone takes part in changes (not viewers, not auditors)."""
    return {c for c in PARTICIPANT_PERMISSIONS if has_project_permission(user, project, c)}


# --- the de-escalation path: kill switch, incident mode, follow-ups ------------------------


def _flag_url(flag: Flag) -> str:
    return reverse("flags:flag_detail", kwargs={"project_key": flag.project.key, "flag_key": flag.key})


def _owners_and_approvers(project: Project, flags: list[Flag]) -> list[AbstractBaseUser]:
    owners = [flag.owner_user for flag in flags if flag.owner_user_id]
    return [*owners, *holders_of(project, "approve_change")]


def _open_follow_up(*, project: Project, environment: Environment, kind: str, title: str, reason: str,
                    actor: AbstractBaseUser, flag: Flag | None = None, incident: Incident | None = None) -> FollowUp:
    return FollowUp.objects.create(project=project, environment=environment, flag=flag, incident=incident, kind=kind,
                                   title=title, reason=reason, opened_by=actor, opened_by_label=actor.get_username())


@transaction.atomic
def killswitch_flip(*, targeting: Targeting, reason: str, actor: AbstractBaseUser) -> Targeting:
    """Operators send a flag in one environment to its fallback at once, with a reason:
    making things safer never waits for an approval. The flag's owner and the approvers hear
    of it, and a follow-up review item stays open until someone acknowledges it."""
    targeting = Targeting.objects.select_related("flag__owner_user", "flag__fallback_variation",
                                                 "environment__project").get(pk=targeting.pk)
    project = targeting.environment.project
    flag = targeting.flag
    if not has_project_permission(actor, project, "flip_killswitch"):
        raise ValidationError("Flipping a kill switch needs the operator role in this project.")
    reason = _require_reason(reason)
    if not targeting.enabled:
        raise ValidationError(f"{flag.key} is already off in {targeting.environment.name}: everyone gets the "
                              f"fallback {flag.fallback_variation.key}.")
    updated = flag_services.targeting_update(targeting=targeting, actor=actor, enabled=False,
                                             reason=f"Kill switch: {reason}")
    _pause_plans([flag.pk], targeting.environment, actor, f"Kill switch: {reason}")
    record(actor=actor, action=AuditAction.KILLSWITCH_FLIPPED, target=flag, project=project,
           environment=targeting.environment, flag=flag, after={"enabled": False},
           reason=reason, summary=f"Kill switch: {flag.key} sent to its fallback in {targeting.environment.name}")
    title = f"Kill switch: {flag.key} sent to {flag.fallback_variation.key} in {targeting.environment.name}"
    _open_follow_up(project=project, environment=targeting.environment, kind=FollowUp.Kind.KILLSWITCH, title=title,
                    reason=reason, actor=actor, flag=flag)
    notify(recipients=[u for u in _owners_and_approvers(project, [flag]) if u.pk != actor.pk], kind="killswitch.flipped",
           title=title, body=f"{actor.get_username()}: {reason}", url=_flag_url(flag))
    return updated


def _incident_targetings(environment: Environment, surfaces: list[str], guard: Any) -> list[Targeting]:
    """The targetings incident mode turns off, locked in the guard's order (flags first)."""
    targetings = Targeting.objects.filter(environment=environment, enabled=True)
    if surfaces:
        targetings = targetings.filter(flag__behavior_surface__in=surfaces)
    flag_ids = list(targetings.values_list("flag_id", flat=True))
    guard.touch_flags(project_id=environment.project_id, flag_ids=flag_ids)
    return list(targetings.filter(flag_id__in=flag_ids).select_for_update(of=("self",))
                .select_related("flag__owner_user", "flag__project", "environment").order_by("flag__key"))


@transaction.atomic
def incident_start(*, environment: Environment, surfaces: list[str], reason: str, actor: AbstractBaseUser) -> Incident:
    """Incident mode: every flag that is on in the environment (or only those of the chosen
    behavior surfaces) goes to its fallback in one transaction."""
    project = environment.project
    if not has_project_permission(actor, project, "flip_killswitch"):
        raise ValidationError("Incident mode needs the operator role in this project.")
    reason = _require_reason(reason)
    unknown = set(surfaces) - set(BehaviorSurface.values)
    if unknown:
        raise ValidationError({"surfaces": f"Unknown behavior surface(s): {', '.join(sorted(unknown))}."})
    with governed_write() as guard:
        targetings = _incident_targetings(environment, surfaces, guard)
        # One incident start at a time per environment (locked after the flags, in the
        # guard's order: catalog writes lock flags first and bump the environment last).
        Environment.objects.select_for_update().get(pk=environment.pk)
        if Incident.objects.filter(environment=environment, lifted_at__isnull=True).exists():
            raise ValidationError(f"Incident mode is already on in {environment.name}: lift it first.")
        if not targetings:
            raise ValidationError({"surfaces": f"No flag of those surfaces is on in {environment.name}: nothing to "
                                               "send to a fallback."})
        # What each flag served when incident mode stopped it: lifting may restore exactly
        # that, and nothing else, without a new approval.
        serving = served_states(project_id=project.pk, flag_ids=[t.flag_id for t in targetings])
        affected = []
        for targeting in targetings:
            updated = flag_services.targeting_update(targeting=targeting, actor=actor, enabled=False,
                                                     reason=f"Incident mode: {reason}")
            served = serving.get(pair_key(targeting.flag_id, environment.pk))
            affected.append({"targeting": targeting.pk, "flag": targeting.flag.key, "version": updated.version,
                             "served_hash": served.hash if served else None})
    _pause_plans([t.flag_id for t in targetings], environment, actor, f"Incident mode: {reason}")
    scope = ", ".join(BehaviorSurface(s).label for s in sorted(surfaces)) if surfaces else "every flag"
    incident = Incident.objects.create(project=project, environment=environment, surfaces=sorted(surfaces),
                                       reason=reason, started_by=actor, started_by_label=actor.get_username(),
                                       affected=affected)
    title = f"Incident mode in {environment.name}: {len(affected)} flag(s) sent to their fallbacks ({scope})"
    record(actor=actor, action=AuditAction.INCIDENT_STARTED, target=incident, project=project,
           environment=environment, after={"surfaces": sorted(surfaces), "flags": [a["flag"] for a in affected]},
           reason=reason, summary=title)
    _open_follow_up(project=project, environment=environment, kind=FollowUp.Kind.INCIDENT, title=title,
                    reason=reason, actor=actor, incident=incident)
    flags = [t.flag for t in targetings]
    notify(recipients=[u for u in _owners_and_approvers(project, flags) if u.pk != actor.pk], kind="incident.started",
           title=title, body=f"{actor.get_username()}: {reason}",
           url=reverse("rollouts:incidents", kwargs={"project_key": project.key}))
    return incident


@transaction.atomic
def incident_lift(*, incident: Incident, reason: str, actor: AbstractBaseUser) -> Incident:
    """Turn back on the flags incident mode turned off, unless someone changed them since:
    their targeting moved past the version incident mode left, or what they would serve once
    on (segments, values, the fallback) differs from what they served when incident mode
    stopped them. Those stay off and are listed. Restoring exactly the served state that was
    serving needs no new approval: the guard is authorised for that hash and nothing else."""
    incident = Incident.objects.select_for_update(of=("self",)).select_related("project", "environment").get(pk=incident.pk)
    project = incident.project
    if not has_project_permission(actor, project, "flip_killswitch"):
        raise ValidationError("Lifting incident mode needs the operator role in this project.")
    if incident.lifted_at is not None:
        raise ValidationError("This incident was lifted already.")
    reason = _require_reason(reason)
    by_id = {t.pk: t for t in Targeting.objects.select_related("flag", "environment")
             .filter(pk__in=[a["targeting"] for a in incident.affected])}
    restored, left = [], []
    for entry in incident.affected:
        targeting = by_id.get(entry["targeting"])
        if targeting is None or not entry.get("served_hash"):
            left.append(entry["flag"])
            continue
        restoring = Authorization({pair_key(targeting.flag_id, targeting.environment_id): entry["served_hash"]},
                                  f"incident {incident.pk} lifted")
        try:
            # One flag that may no longer go on (changed since, archived) holds back no other.
            with transaction.atomic(), governed_write(authorization=restoring) as scope:
                scope.touch_flags(project_id=project.pk, flag_ids=[targeting.flag_id])
                current = Targeting.objects.select_for_update(of=("self",)).get(pk=targeting.pk)
                if current.version != entry["version"] or current.enabled:
                    raise ValidationError("changed since incident mode")
                flag_services.targeting_update(targeting=current, actor=actor, enabled=True,
                                               expected_version=entry["version"], reason=f"Incident lifted: {reason}")
        except ValidationError:  # GovernanceError included: it would serve something else now
            left.append(entry["flag"])
            continue
        restored.append(entry["flag"])
    incident.lifted_at = timezone.now()
    incident.lifted_by = actor
    incident.lift_reason = reason
    incident.save(update_fields=["lifted_at", "lifted_by", "lift_reason"])
    summary = f"Incident mode lifted in {incident.environment.name}: {len(restored)} flag(s) back on"
    if left:
        summary += f"; left as they are (changed since, or no longer allowed on): {', '.join(left)}"
    record(actor=actor, action=AuditAction.INCIDENT_LIFTED, target=incident, project=project,
           environment=incident.environment, after={"restored": restored, "left": left}, reason=reason,
           summary=summary)
    incident.restored, incident.left = restored, left
    return incident


@transaction.atomic
def follow_up_acknowledge(*, follow_up: FollowUp, note: str, actor: AbstractBaseUser) -> FollowUp:
    """A second person reviews a move to the fallback: what happened, what comes next."""
    follow_up = FollowUp.objects.select_for_update(of=("self",)).select_related("project", "environment", "flag").get(
        pk=follow_up.pk)
    if not participation(actor, follow_up.project):
        raise ValidationError("Acknowledging needs the editor, approver or operator role in this project.")
    if follow_up.acknowledged_at is not None:
        raise ValidationError("This follow-up was acknowledged already.")
    if follow_up.opened_by_id == actor.pk:
        raise ValidationError("A second person reviews what was done: someone else must acknowledge this.")
    note = (note or "").strip()
    if not note:
        raise ValidationError({"note": "Say what was found and what happens next."})
    check_text_limit("note", note)
    follow_up.acknowledged_at = timezone.now()
    follow_up.acknowledged_by = actor
    follow_up.note = note
    follow_up.save(update_fields=["acknowledged_at", "acknowledged_by", "note"])
    record(actor=actor, action=AuditAction.FOLLOW_UP_ACKNOWLEDGED, target=follow_up, project=follow_up.project,
           environment=follow_up.environment, flag=follow_up.flag, after={"note": note}, reason=note,
           summary=f"Acknowledged: {follow_up.title}")
    return follow_up


# --- approval policy -----------------------------------------------------------------------

POLICY_LIMITS = {"approvals_for_escalation": (1, 10), "approvals_otherwise": (1, 10), "expire_after_days": (1, 90)}


@transaction.atomic
def approval_policy_update(*, environment: Environment, actor: AbstractBaseUser, **values: Any) -> ApprovalPolicy:
    """Project admins set how many approvals an environment needs and when requests expire.
    Requests already open keep the number they were opened with."""
    if not has_project_permission(actor, environment.project, "manage_approval_policy"):
        raise ValidationError("Changing approval policies needs the project admin role.")
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
