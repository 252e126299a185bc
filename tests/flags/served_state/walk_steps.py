"""What a step of the served-state property walk can be (tests/flags/served_state/test_guard_property.py):
Hypothesis strategies drawing edits through each catalog service and change-control entry
from the demo's own flags, variations, segments, account keys and people."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from audit.services import SystemActor
from flags.demo import SUPPORT_AI_PROFILE_SCHEMA

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

# --- what a step can be ----------------------------------------------------------------------

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

