"""Running the served-state property walk (tests/flags/served_state/test_guard_property.py) against
the database, and what is checked after every step."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from hypothesis import event

from audit.models import AuditEvent
from flags import services as flag_services
from flags.models import Environment, Flag, Project, Segment, Targeting, Variation
from flags.served_state.guard import ServedState, served_states
from flags.served_state.policy import classify_served_change
from rollouts.change_control import applying, approving, incident_mode, kill_switch, submitting
from rollouts.models import Approval, ApprovalPolicy, ChangeRequest, Incident
from tests.flags.served_state.walk_steps import APPROVERS, MAX_STEPS, WALKER, follow_ups

# --- running a step against the database -----------------------------------------------------


def _edited_list(current: list[Any], edit: tuple[str, Any]) -> list[Any]:
    kind, argument = edit
    if kind == "append":
        return [*current, argument]
    if kind == "drop":
        return [item for index, item in enumerate(current) if index != argument]
    if kind == "reverse":
        return list(reversed(current))
    return argument  # "replace"


def _targeting_changes(targeting: Targeting, changes: dict[str, Any]) -> dict[str, Any]:
    resolved = dict(changes)
    for name in ("rules", "targets"):
        if name in resolved:
            resolved[name] = _edited_list(copy.deepcopy(getattr(targeting, name)), resolved[name])
    return resolved


def _value(variation: Variation, source: tuple[str, Any]) -> Any:
    kind, argument = source
    if kind == "literal":
        return argument
    # (an aimed step may have moved to another flag than the one its value was drawn for)
    value = copy.deepcopy((variation.flag.variations.filter(key=argument).first() or variation).value)
    if kind == "tweak":
        value = {**value, "toolMode": "approval_required"} if isinstance(value, dict) else f"{value}-v2"
    return value


def _variation_changes(variation: Variation, changes: dict[str, Any]) -> dict[str, Any]:
    resolved = dict(changes)
    if "value" in resolved:
        resolved["value"] = _value(variation, resolved["value"])
    return resolved


def _segment_changes(segment: Segment, changes: dict[str, Any]) -> dict[str, Any]:
    resolved = dict(changes)
    for name in ("included_keys", "excluded_keys"):
        if name in resolved:
            kind, argument = resolved[name]
            current = list(getattr(segment, name))
            resolved[name] = ([*current, argument] if kind == "add"
                              else [key for key in current if key != argument] if kind == "remove" else argument)
    return resolved


@dataclass
class Walk:
    project: Project
    people: dict[str, Any]
    # pair key -> the hash it served when this walk saw incident mode stop it
    stopped: dict[str, str] = field(default_factory=dict)
    pinned: int | None = None  # the request a submission opened, which its follow-ups act on
    # request id -> the served states when it was submitted
    submitted_from: dict[int, dict[str, ServedState]] = field(default_factory=dict)

    def targeting(self, flag_key: str, environment_key: str) -> Targeting:
        return Targeting.objects.select_related("flag", "environment").get(
            flag__project=self.project, flag__key=flag_key, environment__key=environment_key)

    def request(self, index: int | str) -> ChangeRequest | None:
        if index == "pinned":  # the request the submission before these follow-ups opened
            return ChangeRequest.objects.get(pk=self.pinned)
        requests = list(ChangeRequest.objects.filter(project=self.project).order_by("pk"))
        return requests[index % len(requests)] if requests else None

    def aimed(self, action: dict[str, Any], what: str) -> Any:
        """What the step edits: its drawn targeting (flag, environment), variation (flag,
        variation) or segment; or, when it aims at the newest change request, the n-th of those
        that request would serve."""
        drawn = {"targetings": (action.get("flag"), action.get("environment")),
                 "variations": (action.get("flag"), action.get("variation")), "segments": action.get("segment")}[what]
        newest = self.request(-1)
        if action["aim"] is None or newest is None:
            return drawn
        flag_keys = dict(Flag.objects.filter(project=self.project).values_list("pk", "key"))
        environment_keys = dict(Environment.objects.filter(project=self.project).values_list("pk", "key"))
        reached: set[Any] = set()
        for pair, state in newest.served_states.items():
            flag_id, environment_id = map(int, pair.split(":"))
            if what == "targetings":
                reached.add((flag_keys[flag_id], environment_keys[environment_id]))
            else:
                reached |= {(flag_keys[flag_id], name) if what == "variations" else name
                            for name in state.get(what, {})}
        return sorted(reached)[action["aim"] % len(reached)] if reached else drawn

    def run(self, action: dict[str, Any]) -> str:
        """Run one step; what came of it, for the statistics (a ValidationError when refused)."""
        name = action["step"]
        actor = self.people.get(action.get("actor", "operator"))
        if name in ("targeting_update", "targeting_change_submit"):
            targeting = self.targeting(*self.aimed(action, "targetings"))
            changes = _targeting_changes(targeting, action["changes"])
            if name == "targeting_update":
                flag_services.targeting_update(targeting=targeting, actor=actor, reason="property walk", **changes)
            else:
                submitting.targeting_change_submit(targeting=targeting, changes=changes, reason=action["reason"],
                                                 actor=actor)
        elif name in ("variation_update", "variation_change_submit"):
            flag_key, variation_key = self.aimed(action, "variations")
            variation = Variation.objects.select_related("flag").get(
                flag__project=self.project, flag__key=flag_key, key=variation_key)
            changes = _variation_changes(variation, action["changes"])
            if name == "variation_update":
                flag_services.variation_update(variation=variation, actor=actor, reason="property walk", **changes)
            else:
                submitting.variation_change_submit(variation=variation, actor=actor, reason="property walk", **changes)
        elif name in ("flag_update", "contract_change_submit"):
            flag = Flag.objects.get(project=self.project, key=self.aimed(action, "targetings")[0])
            submit = flag_services.flag_update if name == "flag_update" else submitting.contract_change_submit
            submit(flag=flag, actor=actor, reason="property walk", **action["changes"])
        elif name in ("segment_update", "segment_change_submit"):
            segment = Segment.objects.get(project=self.project, key=self.aimed(action, "segments"))
            changes = _segment_changes(segment, action["changes"])
            if name == "segment_update":
                flag_services.segment_update(segment=segment, actor=actor, reason="property walk", **changes)
            else:
                submitting.segment_change_submit(segment=segment, changes=changes, actor=actor,
                                               reason=action["reason"])
        elif name in ("change_request_approve", "change_request_apply"):
            change_request = self.request(action["request"])
            if change_request is None:
                return "no request yet"
            if name == "change_request_approve":
                change_request = approving.change_request_approve(change_request=change_request, actor=actor)
            else:
                change_request = applying.change_request_apply(change_request=change_request, actor=actor)
            return f"{change_request.kind} request {change_request.status} ({change_request.required_approvals} needed)"
        elif name == "killswitch_flip":
            kill_switch.killswitch_flip(targeting=self.targeting(*self.aimed(action, "targetings")),
                                     reason="property walk", actor=actor)
        elif name == "incident_start":
            environment = Environment.objects.get(project=self.project, key=action["environment"])
            incident_mode.incident_start(environment=environment, surfaces=action["surfaces"], reason="property walk",
                                    actor=actor)
        elif name == "incident_lift":
            incident = Incident.objects.filter(project=self.project).order_by("-pk").first()
            if incident is None:
                return "no incident yet"
            incident = incident_mode.incident_lift(incident=incident, reason="property walk", actor=actor)
            return f"{len(incident.restored)} restored, {len(incident.left)} left"
        else:
            raise AssertionError(f"unknown step {name}")
        return "done"


# --- what is checked after every step --------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    served: dict[str, ServedState]
    audit_rows: int
    request_status: dict[int, str]
    approvals: int

    @classmethod
    def now(cls, project: Project) -> Seen:
        return cls(served_states(project_id=project.pk), AuditEvent.objects.count(),
                   dict(ChangeRequest.objects.filter(project=project).values_list("pk", "status")),
                   Approval.objects.count())

    def hashes(self) -> dict[str, str]:
        return {key: served.hash for key, served in self.served.items()}


def _approvals_required(walk: Walk, change_request: ChangeRequest) -> int:
    """What the environments' policies require for the served states this request was bound
    to, judged by the served-state policy against what they served when it was submitted:
    the approvals for an escalation, or the others for any other risk-raising change."""
    required = 0
    for key, approved in change_request.served_states.items():
        submitted_from = walk.submitted_from.get(change_request.pk, {}).get(key)
        if submitted_from is None:
            continue
        judged = classify_served_change(before=submitted_from.state, after=approved)
        policy = (ApprovalPolicy.objects.filter(environment_id=submitted_from.environment_id).first()
                  or ApprovalPolicy())
        if judged.raises_risk:
            required = max(required, policy.approvals_for_escalation if judged.escalation
                           else policy.approvals_otherwise)
    return required


def _assert_approved_as_policy_requires(walk: Walk, change_request: ChangeRequest, where: str) -> None:
    # Counted here (approvals of this version, by approvers other than the requester), not by
    # the service that decides it.
    approvers = set(change_request.approvals.filter(decision=Approval.Decision.APPROVE,
                                                    diff_hash=change_request.diff_hash)
                    .exclude(approver_id=change_request.requester_id).values_list("approver__username", flat=True))
    required = max(1, change_request.required_approvals, _approvals_required(walk, change_request))
    assert len(approvers & APPROVERS) >= required, (
        f"{where}: CR-{change_request.pk} ({change_request.kind}: {change_request.reasons}) was applied with the "
        f"approvals of {sorted(approvers)}; its policy requires {required} (the request asked for "
        f"{change_request.required_approvals})")


def _check(walk: Walk, done: list[str], action: dict[str, Any], before: Seen, after: Seen,
           refused: str | None) -> None:
    where = "after the steps\n  " + "\n  ".join(f"{n}. {line}" for n, line in enumerate(done, start=1)) + "\n"
    assert set(after.served) == set(before.served), f"{where}: the governed pairs changed"
    if refused is not None:
        assert after.hashes() == before.hashes(), f"{where} was refused ({refused}) but a served state changed"
        assert after.audit_rows == before.audit_rows, f"{where} was refused ({refused}) but wrote audit rows"
        assert after.request_status == before.request_status, f"{where} was refused but a change request moved"
        assert after.approvals == before.approvals, f"{where} was refused but an approval was saved"
        return
    applied = [ChangeRequest.objects.get(pk=pk) for pk, status in after.request_status.items()
               if status == ChangeRequest.Status.APPLIED and before.request_status.get(pk) != status]
    for change_request in applied:
        _assert_approved_as_policy_requires(walk, change_request, where)
    changed = [key for key in before.served if after.served[key].hash != before.served[key].hash]
    if changed:
        assert after.audit_rows > before.audit_rows, f"{where} changed what production serves without an audit row"
    for key in changed:
        old, new = before.served[key], after.served[key]
        if any(change_request.served_hashes.get(key) == new.hash for change_request in applied):
            continue  # (a) exactly what an approved request bound
        if action["step"] == "incident_lift" and walk.stopped.get(key) == new.hash:
            continue  # (c) back to what was serving when incident mode stopped it
        classification = classify_served_change(before=old.state, after=new.state)
        assert not classification.raises_risk, (
            f"{where}: {new.flag_key} in {new.environment_name} changed without approval, raising risk: "
            + "; ".join(reason.text for reason in classification.reasons))
    if action["step"] == "incident_start":
        walk.stopped = {key: before.served[key].hash for key in changed}
    elif action["step"] == "incident_lift":
        walk.stopped = {}


def run_walk(project: Project, drawn: list[dict[str, Any]]) -> None:
    """Run the drawn steps, each submission that opens a change request followed by what its
    `then` asks for (approvals, an edit, the apply), each a step of its own, up to MAX_STEPS,
    checking after every one."""
    people = {user.username: user for user in get_user_model().objects.filter(
        username__in=("owner", "admin", "pm", "lead", "operator"))}
    walk = Walk(project=project, people={**people, "system": WALKER})
    queue = list(drawn)
    done: list[str] = []
    while queue and len(done) < MAX_STEPS:
        action = queue.pop(0)
        before = Seen.now(project)
        refused = None
        outcome = ""
        try:
            outcome = walk.run(action)
        except ValidationError as error:  # GovernanceError and ConflictError included
            refused = "; ".join(error.messages)[:300]
        after = Seen.now(project)
        done.append(f"{action} -> {'refused: ' + refused if refused else outcome}")
        _check(walk, done, action, before, after, refused)
        opened = sorted(set(after.request_status) - set(before.request_status))
        walk.submitted_from.update({pk: before.served for pk in opened})
        if opened and action.get("then") is not None:
            walk.pinned = opened[-1]
            queue[:0] = follow_ups(action["then"])
        moved = sum(after.served[key].hash != served.hash for key, served in before.served.items())
        event(f"{action['step']}: {('refused ' + refused[:90]) if refused else outcome}"
              + "".join(f", request opened ({ChangeRequest.objects.get(pk=pk).required_approvals} needed)"
                        for pk in opened) + (f", production moved ({moved})" if moved else ""))

