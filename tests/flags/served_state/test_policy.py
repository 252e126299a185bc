"""The approval policy's risk classification, case by case (pure; no database)."""

from __future__ import annotations

import copy
from typing import Any

from flags.served_state.policy import classify_flag_change, classify_targeting_change

RANKS = {"none": 0, "read_only": 1, "approval_required": 3, "write": 4}
INTERNAL = [{"op": "in_segment", "values": ["internal_users"]}]
BETA = [{"op": "in_segment", "values": ["beta_accounts"]}]


def production() -> dict[str, Any]:
    """The demo's production targeting of support_agent_tool_mode."""
    return {"enabled": True, "targets": [], "assignment_unit": "accountId",
            "rules": [{"id": "internal", "description": "Internal support team", "clauses": INTERNAL,
                       "serve": {"variation": "approval_required"}}],
            "default_serve": {"variation": "read_only"}}


def classify(current: dict[str, Any], proposed: dict[str, Any]):
    return classify_targeting_change(current=current, proposed=proposed, risk_ranks=RANKS, fallback="read_only")


def codes(result) -> list[str]:
    return [r.code for r in result.reasons]


def test_tool_mode_escalation__write_for_beta_accounts__escalation_with_readable_reason() -> None:
    proposed = production()
    proposed["rules"].append({"id": "beta", "description": "beta_accounts", "clauses": BETA,
                              "serve": {"variation": "write"}})
    result = classify(production(), proposed)
    assert result.escalation and "risk_escalation" in codes(result)
    texts = " | ".join(r.text for r in result.reasons)
    assert "write (risk 4) becomes reachable" in texts and "approval_required (risk 3)" in texts
    assert "write for beta_accounts (new audience): 0 % → 100 %" in texts


def test_widening__percentage_up__raises_risk_without_escalation() -> None:
    current = production()
    current["rules"].append({"id": "beta", "clauses": BETA, "serve": {
        "split": [{"variation": "read_only", "weight": 95_000}, {"variation": "approval_required", "weight": 5_000}]}})
    proposed = copy.deepcopy(current)
    proposed["rules"][1]["serve"]["split"] = [{"variation": "read_only", "weight": 50_000},
                                              {"variation": "approval_required", "weight": 50_000}]
    result = classify(current, proposed)
    assert codes(result) == ["audience_widened"] and not result.escalation
    assert "5 % → 50 %" in result.reasons[0].text


def test_widening__segment_added_to_a_rule__raises_risk() -> None:
    proposed = production()
    proposed["rules"][0]["clauses"] = [{"op": "in_segment", "values": ["internal_users", "beta_accounts"]}]
    assert "audience_widened" in codes(classify(production(), proposed))


def test_widening__targets_added__raises_risk() -> None:
    proposed = production()
    proposed["targets"] = [{"variation": "approval_required", "values": ["acct-9"]}]
    result = classify(production(), proposed)
    assert codes(result) == ["audience_widened"] and "1 individual target" in result.reasons[0].text


def test_turning_on__raises_risk() -> None:
    current = production() | {"enabled": False}
    result = classify(current, production())
    assert "turned_on" in codes(result)
    assert result.escalation  # approval_required (3) becomes reachable where only the fallback was


def test_rule_removed__audience_falls_to_riskier_default__raises_risk() -> None:
    current = production()
    current["default_serve"] = {"variation": "approval_required"}
    current["rules"] = [{"id": "cautious", "description": "high-risk tenants",
                         "clauses": [{"attribute": "risk_tier", "op": "gte", "values": [3]}],
                         "serve": {"variation": "none"}}]
    proposed = copy.deepcopy(current)
    proposed["rules"] = []
    result = classify(current, proposed)
    assert codes(result) == ["rule_order"] and "high-risk tenants removed" in result.reasons[0].text


def test_rule_reordered__audience_now_matched_by_a_riskier_rule__raises_risk() -> None:
    current = production()
    current["rules"] = [
        {"id": "cautious", "clauses": [{"attribute": "risk_tier", "op": "gte", "values": [3]}],
         "serve": {"variation": "none"}},
        {"id": "internal", "clauses": INTERNAL, "serve": {"variation": "approval_required"}},
    ]
    proposed = copy.deepcopy(current)
    proposed["rules"].reverse()
    assert "rule_order" in codes(classify(current, proposed))


def test_assignment_unit_change__raises_risk() -> None:
    proposed = production() | {"assignment_unit": "userId"}
    assert codes(classify(production(), proposed)) == ["assignment_unit"]


def test_de_escalations__turn_off_roll_back_remove_targets__raise_nothing() -> None:
    assert not classify(production(), production() | {"enabled": False}).raises_risk
    current = production()
    current["rules"].append({"id": "beta", "clauses": BETA, "serve": {
        "split": [{"variation": "read_only", "weight": 50_000}, {"variation": "approval_required", "weight": 50_000}]}})
    rolled_back = copy.deepcopy(current)
    rolled_back["rules"][1]["serve"] = {"variation": "read_only"}
    assert not classify(current, rolled_back).raises_risk
    with_targets = production() | {"targets": [{"variation": "approval_required", "values": ["a", "b"]}]}
    fewer = production() | {"targets": [{"variation": "approval_required", "values": ["a"]}]}
    assert not classify(with_targets, fewer).raises_risk


def test_unchanged__raises_nothing() -> None:
    assert not classify(production(), production()).raises_risk


def test_flag_change__served_value_fallback_schema_type() -> None:
    result = classify_flag_change(
        value_changes={"citation_first_v4": ({"t": 0.2}, {"t": 0.3}), "unused": (1, 2)},
        served_variations={"citation_first_v4", "baseline_v3"}, fallback_change=("baseline_v3", "citation_first_v4"),
        schema_changed=True, value_type_changed=True)
    assert codes(result) == ["value_changed", "fallback_changed", "schema_changed", "value_type_changed"]
    unserved = classify_flag_change(value_changes={"unused": (1, 2)}, served_variations={"baseline_v3"},
                                    fallback_change=None, schema_changed=False, value_type_changed=False)
    assert not unserved.raises_risk
