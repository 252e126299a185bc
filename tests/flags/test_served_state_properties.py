"""A property of the served-state guard: whatever sequence of edits goes through whichever
service, production changes what it serves only as an applied change request approved it,
as incident mode restores what was serving, or in a way the policy says raises no risk.

Each example walks up to twelve steps over the demo project (its three flags, two segments
and its people) through the catalog services directly and through change control:
submissions, approvals, applies, the kill switch and incident mode. Arguments are drawn from
the demo's own flags, variations, segments and account keys, so most steps are valid; the
invalid ones must be refused with a ValidationError and leave nothing behind. A submission
may be followed by its approvals, an edit of what it would serve, and its apply.

After every step, for every governed (flag, environment) pair, the served-state hash is
unchanged unless
  (a) the step applied a change request (its status became "applied") bound to exactly the
      new hash for that pair; the request must also have had the approvals its environment's
      policy requires for the served states it was bound to, as `classify_served_change`
      judges them against what was served when it was submitted (an escalation needs
      `approvals_for_escalation`), counted here from the approval rows;
  (b) `classify_served_change(before, after)` finds no risk in the change; or
  (c) the step lifted incident mode and the pair is back on exactly the hash it served when
      incident mode stopped it (as this walk saw it before incident mode started).
A refused step changes no hash, no audit row, no change request status and no approval; a
step that changes a hash writes at least one audit row.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from audit.models import AuditEvent
from audit.services import SystemActor
from flags import services as flag_services
from flags.demo import SUPPORT_AI_PROFILE_SCHEMA, seed_demo
from flags.models import Environment, Flag, Project, Segment, Targeting, Variation
from flags.served_state.guard import ServedState, served_states
from flags.served_state.policy import classify_served_change
from rollouts.change_control import applying, approving, incident_mode, kill_switch, submitting
from rollouts.models import Approval, ApprovalPolicy, ChangeRequest, Incident

pytestmark = pytest.mark.django_db

PROFILE = "support_assistant_profile"
TOOL_MODE = "support_agent_tool_mode"
INCIDENT_FALLBACK = "support_ai_incident_fallback"
VARIATIONS = {
    PROFILE: ("baseline_v3", "citation_first_v4", "fallback_human_review"),
    TOOL_MODE: ("none", "read_only", "approval_required", "write"),
    INCIDENT_FALLBACK: ("baseline_model", "cached_answer", "human_escalation", "off"),
}
FLAG_KEYS = tuple(VARIATIONS)
SEGMENT_KEYS = ("internal_users", "beta_accounts")
ACCOUNTS = ("acct-internal-001", "acct-beta-101", "acct-beta-999", "acct-new-1")
ENVIRONMENT_KEYS = ("production", "development")
APPROVERS = {"pm", "lead"}  # the demo's holders of the approver role
WALKER = SystemActor("property-walk")

# --- what a step can be ------------------------------------------------------------------------

CLAUSES = (
    {"op": "in_segment", "values": ["internal_users"]},
    {"op": "in_segment", "values": ["beta_accounts"]},
    {"op": "in_segment", "values": ["beta_accounts"], "negate": True},
    {"attribute": "plan", "op": "in", "values": ["beta"]},
    {"attribute": "accountId", "op": "matches", "values": [".*"]},
)
SEGMENT_RULES = (
    [],
    [{"clauses": [{"attribute": "plan", "op": "in", "values": ["beta"]}]}],
    [{"clauses": [{"attribute": "accountId", "op": "matches", "values": [".*"]}]}],
    [{"clauses": [{"op": "in_segment", "values": ["internal_users"]}]}],  # refused in internal_users itself
    [{"clauses": [{"op": "in_segment", "values": ["beta_accounts"]}]}],
)
WEIGHTS = (0, 5_000, 50_000, 95_000, 100_000)


def serves(flag_key: str) -> st.SearchStrategy[dict[str, Any]]:
    keys = VARIATIONS[flag_key]
    single = st.sampled_from(keys).map(lambda key: {"variation": key})
    split = st.tuples(st.lists(st.sampled_from(keys), min_size=2, max_size=2, unique=True),
                      st.sampled_from(WEIGHTS)).map(
        lambda pair: {"split": [{"variation": pair[0][0], "weight": pair[1]},
                                {"variation": pair[0][1], "weight": 100_000 - pair[1]}]})
    return st.one_of(single, split)


def rules(flag_key: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda rule_id, clauses, serve: {"id": rule_id, "clauses": clauses, "serve": serve},
        st.sampled_from(("beta", "everyone", "pilot", "canary")),
        st.lists(st.sampled_from(CLAUSES), min_size=1, max_size=2),
        serves(flag_key),
    )


def targets(flag_key: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda key, values: {"variation": key, "values": values}, st.sampled_from(VARIATIONS[flag_key]),
                     st.lists(st.sampled_from(ACCOUNTS), min_size=1, max_size=2, unique=True))


def some_of(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """One of the fields (most edits change one thing), or any of them together."""
    return st.one_of(*(st.fixed_dictionaries({name: strategy}) for name, strategy in fields.items()),
                     st.fixed_dictionaries({}, optional=fields))


def targeting_changes(flag_key: str) -> st.SearchStrategy[dict[str, Any]]:
    """Edits relative to the targeting at the time of the step (resolved by `_targeting_changes`):
    rules and targets appended, dropped, reordered or replaced, as people edit them."""
    rule_edit = st.one_of(
        st.tuples(st.just("append"), rules(flag_key)),
        st.tuples(st.just("drop"), st.integers(0, 2)),
        st.tuples(st.just("reverse"), st.none()),
        st.tuples(st.just("replace"), st.lists(rules(flag_key), max_size=2)),
    )
    target_edit = st.one_of(
        st.tuples(st.just("append"), targets(flag_key)),
        st.tuples(st.just("drop"), st.integers(0, 1)),
        st.tuples(st.just("replace"), st.lists(targets(flag_key), max_size=2)),
    )
    return some_of({
        "enabled": st.booleans(), "rules": rule_edit, "targets": target_edit, "default_serve": serves(flag_key),
        "assignment_unit": st.sampled_from(("accountId", "targetingKey")),
    })


def values(flag_key: str) -> st.SearchStrategy[tuple[str, Any]]:
    """("copy", key): another variation's value, ("tweak", key): it slightly changed (both valid
    under the schema); ("literal", v): often of the wrong type or against the schema."""
    literals = ({"profile": "baseline_v3"}, [], "text") if flag_key == PROFILE else ("write", "x", 3)
    return st.one_of(st.tuples(st.sampled_from(("copy", "tweak")), st.sampled_from(VARIATIONS[flag_key])),
                     st.tuples(st.just("literal"), st.sampled_from(literals)))


def variation_changes(flag_key: str) -> st.SearchStrategy[dict[str, Any]]:
    return some_of({
        "value": values(flag_key), "risk_rank": st.sampled_from((0, 1, 2, 3, 4, 5, -1)),
        "name": st.sampled_from(("Renamed", "")),
    })


def contract_changes(flag_key: str) -> st.SearchStrategy[dict[str, Any]]:
    schemas = ((SUPPORT_AI_PROFILE_SCHEMA, {"type": "object"}, None, {"type": "array"}, {"type": 5})
               if flag_key == PROFILE else (None, {"type": "string"}))
    return some_of({
        "fallback_variation_key": st.sampled_from((*VARIATIONS[flag_key], "no_such_variation")),
        "json_schema": st.sampled_from(schemas),
    })


def segment_changes() -> st.SearchStrategy[dict[str, Any]]:
    key_edit = st.one_of(st.tuples(st.sampled_from(("add", "remove")), st.sampled_from(ACCOUNTS)),
                         st.tuples(st.just("replace"), st.lists(st.sampled_from(ACCOUNTS), max_size=3, unique=True)))
    return some_of({
        "included_keys": key_edit, "excluded_keys": key_edit, "rules": st.sampled_from(SEGMENT_RULES),
    })


def step(name: str, **parts: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"step": st.just(name), **parts})


def flag_step(build: Callable[[str], st.SearchStrategy[dict[str, Any]]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(FLAG_KEYS).flatmap(build)


def variation_step(name: str, actors: tuple[str, ...], aim: st.SearchStrategy[int | None],
                   **more: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return flag_step(lambda f: step(name, flag=st.just(f), variation=st.sampled_from(VARIATIONS[f]),
                                    changes=variation_changes(f), actor=st.sampled_from(actors), aim=aim, **more))


REQUEST = st.sampled_from((-1, -1, -2, 0))  # which change request, by age: -1 is the newest
# Edits may aim at what the newest change request would serve (the n-th targeting, variation
# or segment in its bound served states) instead of the drawn one: an edit there, between the
# approval and the apply, is what the apply must notice.
AIM = st.sampled_from((None, None, 0, 1, 2))
AIMED = st.sampled_from((0, 1, 2))
REASON = st.sampled_from(("property walk", "property walk", "property walk", ""))
GOVERNED_MOSTLY = st.sampled_from(("production", "production", "development"))


def direct_edits(aim: st.SearchStrategy[int | None]) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    """The catalog services called directly, by editors and by the system (commands, jobs)."""
    return {
        "targeting_update": flag_step(lambda f: step(
            "targeting_update", flag=st.just(f), environment=st.sampled_from(ENVIRONMENT_KEYS),
            changes=targeting_changes(f), actor=st.sampled_from(("owner", "admin", "system")), aim=aim)),
        "variation_update": variation_step("variation_update", ("owner", "system"), aim),
        "flag_update": flag_step(lambda f: step(
            "flag_update", flag=st.just(f), changes=contract_changes(f), actor=st.sampled_from(("owner", "system")),
            aim=aim)),
        "segment_update": step("segment_update", segment=st.sampled_from(SEGMENT_KEYS), changes=segment_changes(),
                               actor=st.sampled_from(("owner", "system")), aim=aim),
        "killswitch_flip": step("killswitch_flip", flag=st.sampled_from(FLAG_KEYS),
                                environment=st.sampled_from(ENVIRONMENT_KEYS), aim=aim),
    }


# What follows a submission: nothing; its approvals (pm and lead); one approval and the apply;
# both and the apply; or both, an edit aimed at what it would serve, and then the apply.
TAMPER = st.sampled_from(sorted(direct_edits(AIMED).items())).flatmap(lambda item: item[1])
THEN = st.one_of(st.sampled_from((None, "approve", "approve_once_and_apply", "approve_and_apply")),
                 st.tuples(st.just("approve_edit_apply"), TAMPER))
SERVICES = {
    **direct_edits(AIM),
    "targeting_change_submit": flag_step(lambda f: step(
        "targeting_change_submit", flag=st.just(f), environment=GOVERNED_MOSTLY,
        changes=targeting_changes(f), actor=st.sampled_from(("owner", "owner", "operator")), reason=REASON,
        then=THEN, aim=AIM)),
    "variation_change_submit": variation_step("variation_change_submit", ("owner",), AIM, then=THEN),
    "contract_change_submit": flag_step(lambda f: step(
        "contract_change_submit", flag=st.just(f), changes=contract_changes(f), actor=st.just("owner"), then=THEN,
        aim=AIM)),
    "segment_change_submit": step("segment_change_submit", segment=st.sampled_from(SEGMENT_KEYS),
                                  changes=segment_changes(), actor=st.just("owner"), reason=REASON, then=THEN,
                                  aim=AIM),
    "change_request_approve": step("change_request_approve", request=REQUEST,
                                   actor=st.sampled_from(("pm", "lead", "owner"))),
    "change_request_apply": step("change_request_apply", request=REQUEST,
                                 actor=st.sampled_from(("owner", "owner", "lead", "operator"))),
    "incident_start": step("incident_start", environment=st.sampled_from(ENVIRONMENT_KEYS),
                           surfaces=st.lists(st.sampled_from(("ai_profile", "agent_tools", "fallback_mode", "bogus")),
                                             max_size=2, unique=True)),
    "incident_lift": step("incident_lift"),
}
# How often each service is drawn: submissions most, so that walks reach approvals and applies.
WEIGHTS_BY_SERVICE = {
    "targeting_update": 2, "targeting_change_submit": 3, "variation_update": 2, "variation_change_submit": 2,
    "flag_update": 2, "contract_change_submit": 2, "segment_update": 2, "segment_change_submit": 2,
    "change_request_approve": 1, "change_request_apply": 1, "killswitch_flip": 1, "incident_start": 1,
    "incident_lift": 1,
}
STEP = st.sampled_from([name for name, weight in WEIGHTS_BY_SERVICE.items() for _ in range(weight)]).flatmap(
    SERVICES.__getitem__)


def follow_ups(then: Any) -> list[dict[str, Any]]:
    """The steps `then` asks for after a submission that opened a change request (pinned)."""
    approve = [{"step": "change_request_approve", "request": "pinned", "actor": "pm"},
               {"step": "change_request_approve", "request": "pinned", "actor": "lead"}]
    apply = [{"step": "change_request_apply", "request": "pinned", "actor": "owner"}]
    if isinstance(then, tuple):  # ("approve_edit_apply", the edit)
        return [*approve, then[1], *apply]
    return {None: [], "approve": approve, "approve_once_and_apply": [*approve[:1], *apply],
            "approve_and_apply": [*approve, *apply]}[then]


WALKS = st.lists(STEP, min_size=1, max_size=10)
MAX_STEPS = 12  # steps run per walk, follow-ups included

# --- running a step against the database --------------------------------------------------------


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


# --- what is checked after every step -----------------------------------------------------------


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


def _walk(project: Project, drawn: list[dict[str, Any]]) -> None:
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


ESCALATE_TOOL_MODE = {
    "step": "targeting_change_submit", "flag": TOOL_MODE, "environment": "production", "actor": "owner",
    "reason": "property walk", "aim": None,
    "changes": {"rules": ("append", {"id": "beta", "clauses": [{"op": "in_segment", "values": ["beta_accounts"]}],
                                     "serve": {"variation": "write"}})},
}


@pytest.fixture
def demo_project(db: None) -> Project:
    project, _ = seed_demo()
    return project


# The demo is seeded once per test by a function-scoped fixture; every example runs inside a
# savepoint that is rolled back, so each one starts from the same seeded demo (which is why the
# function-scoped-fixture health check can be suppressed).
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=WALKS)
# Walks worth running every time, whatever is drawn:
# - write tools for beta accounts (an escalation: two approvals), approved and applied;
@example(steps=[ESCALATE_TOOL_MODE | {"then": "approve_and_apply"}])
# - the same, with the value of "write" edited between the approvals and the apply (it is not
#   served yet, so the edit applies at once; the apply must then refuse what nobody approved);
@example(steps=[ESCALATE_TOOL_MODE | {"then": ("approve_edit_apply", {
    "step": "variation_update", "flag": TOOL_MODE, "variation": "write", "changes": {"value": ("tweak", "write")},
    "actor": "owner", "aim": None})}])
# - incident mode in production, then lifted: each flag back on exactly what it served;
@example(steps=[{"step": "incident_start", "environment": "production", "surfaces": []}, {"step": "incident_lift"}])
# - found by this test: a flag-wide request moving production's fallback to a riskier variation
#   (an escalation under the served-state policy) applied with one approval.
@example(steps=[{"step": "contract_change_submit", "flag": INCIDENT_FALLBACK,
                 "changes": {"fallback_variation_key": "cached_answer"}, "actor": "owner",
                 "then": "approve_once_and_apply", "aim": None}])
def test_served_state__any_sequence_of_edits_through_any_service__production_moves_only_as_approved_or_safer(
        demo_project: Project, steps: list[dict[str, Any]]) -> None:
    # Given the seeded demo (production governed), When the steps run one by one,
    # Then after each one every production served state is unchanged, approved, restored or safer
    with transaction.atomic():
        try:
            _walk(demo_project, steps)
        finally:
            transaction.set_rollback(True)
