"""Flags as code, the document: a single entry or a list of them parses the same, and every
kind of mistake in a file (its YAML, an entry's shape, a contract field, a variation, a
targeting, a value against the flag's JSON Schema) is named by flag and path, with nothing
written."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from rollouts.flags_as_code import parse_document
from tests.rollouts.flags_as_code.support import PROFILE, as_yaml, body, catalog_state, problem_texts, run
from tests.rollouts.support import TOOL_MODE

pytestmark = pytest.mark.django_db


# --- validation: every problem named, nothing written ---------------------------------------


def _edit(mutate: Any) -> Any:
    def text(project: Any) -> str:
        contract = copy.deepcopy(body(project, TOOL_MODE))
        result = mutate(contract)
        return result if isinstance(result, str) else as_yaml(contract)
    return text


def _set(path: str, value: Any) -> Any:
    def mutate(contract: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = contract
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return _edit(mutate)


BAD_INPUTS = {
    "malformed YAML": (lambda p: "ai_featureops_contract:\n  flag_key: x\n   name: [\n",
                       "line 3, column 8: Not valid YAML"),
    "a --- stream": (lambda p: "ai_featureops_contract: {flag_key: a}\n---\nai_featureops_contract: {flag_key: b}\n",
                     "One YAML document per file"),
    "not a contract": (lambda p: "- flag_key: x\n", "#1: Each contract is a mapping whose only key"),
    "aliases": (lambda p: "- &c {ai_featureops_contract: {flag_key: a}}\n- *c\n", "anchors and aliases"),
    "impossible date": (lambda p: "ai_featureops_contract: {flag_key: a, review_date: 2026-13-01}\n",
                        "month must be in 1..12"),
    "bad flag key": (lambda p: "ai_featureops_contract: {flag_key: Tool Mode}\n", "#1: flag_key: required"),
    "unknown field": (_set("colour", "blue"), f"{TOOL_MODE}: colour: unknown field"),
    "seed rollout field": (_set("rollout_path", ["internal_users"]), "rollout_path: a rollout-plan field"),
    "wrong type": (_set("name", 12), f"{TOOL_MODE}: name: must be text"),
    "unknown choice": (_set("behavior_surface", "retrieval_and_prompt_profile"), "behavior_surface: 'retrieval_"),
    "guardrails not a list": (_set("guardrails", "p95_latency"), "guardrails: must be a list of names"),
    "bad date": (_set("review_date", "next week"), "review_date: must be a date"),
    "owner not a member": (_set("owner_user", "stranger"), "owner_user: 'stranger' is not a member"),
    "value type changed": (_set("value_type", "boolean"), "value_type: cannot change"),
    "unknown fallback": (_set("fallback", "admin"), "fallback: “admin” is not one of the variations"),
    "unquoted off": (_set("variations/1/value", False), "variations.read_only.value: A string flag needs a string"),
    "negative risk": (_set("variations/3/risk_rank", -1), "variations.write.risk_rank: must be a whole number"),
    "variation deleted": (_edit(lambda c: c["variations"].pop()), "variations: write missing from the file"),
    "new variation without value": (_edit(lambda c: c["variations"].append({"key": "draft"})),
                                    "variations.draft.value: required for a new variation"),
    "unknown environment": (_set("targeting/prod", {"enabled": False}), "targeting.prod: no environment 'prod'"),
    "enabled not a boolean": (_set("targeting/production/enabled", "yes"), "targeting.production.enabled: must be"),
    "unknown variation in a rule": (_set("targeting/production/rules/0/serve", {"variation": "admin"}),
                                    "targeting.production.rules[0].serve.variation: unknown variation 'admin'"),
    "unknown segment": (_set("targeting/production/rules/0/clauses", [{"op": "in_segment", "values": ["vip"]}]),
                        "targeting.production.rules: unknown segment(s): vip"),
    "split not 100 %": (_set("targeting/production/default_serve", {"split": [{"variation": "none", "weight": 5}]}),
                        "targeting.production.default_serve.split: weights add up to"),
    "unknown targeting field": (_set("targeting/production/owner", "x"), "targeting.production.owner: unknown field"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_import__bad_input__problem_names_flag_and_path_nothing_written(demo, case: str) -> None:
    # Given a file with one kind of mistake (and, where it parses, a valid change beside it)
    make_text, expected = BAD_INPUTS[case]
    text = make_text(demo)
    before = catalog_state()

    # When it is imported
    result = run(demo, text)

    # Then the problem is named, with flag and path, and nothing is written
    assert any(expected in t for t in problem_texts(result)), problem_texts(result)
    assert not result.applied and catalog_state() == before


def test_import__schema_violation__named_and_nothing_written(demo) -> None:
    # Given a profile value that breaks the flag's JSON Schema, beside a valid rename
    contract = body(demo, PROFILE)
    contract["name"] = "Renamed"
    contract["variations"][1]["value"]["temperature"] = 9
    before = catalog_state()

    # When it is imported
    result = run(demo, as_yaml(contract))

    # Then the value's path and the schema's words are reported, and nothing is written
    assert problem_texts(result) == [f"{PROFILE}: variations.citation_first_v4.value: Value does not match the "
                                     "flag's JSON Schema: temperature: 9 is greater than the maximum of 2"]
    change = next(c for c in result.by_flag[0].changes if c.path.startswith("variations.citation_first_v4"))
    assert (change.path, change.before, change.after) == ("variations.citation_first_v4.value.temperature", "0.2", "9")
    assert catalog_state() == before


def test_parse__single_mapping_or_list__same_contracts() -> None:
    one = parse_document("ai_featureops_contract: {flag_key: a}\n")
    listed = parse_document("- ai_featureops_contract: {flag_key: a}\n")
    assert one == listed == ([("a", {"flag_key": "a"})], [])
    duplicate = parse_document("- ai_featureops_contract: {flag_key: a}\n- ai_featureops_contract: {flag_key: a}\n")
    assert [str(p) for p in duplicate[1]] == ["a: flag_key: appears twice in the file"]
