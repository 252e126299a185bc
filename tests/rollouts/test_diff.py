"""The change request's proposal in words (pure; no database)."""

from __future__ import annotations

from typing import Any

from rollouts.diff import describe_targeting_change

RANKS = {"none": 0, "read_only": 1, "approval_required": 3, "write": 4}
INTERNAL = [{"op": "in_segment", "values": ["internal_users"]}]
BETA = [{"op": "in_segment", "values": ["beta_accounts"]}]


def production() -> dict[str, Any]:
    return {"enabled": True, "targets": [], "assignment_unit": "accountId",
            "rules": [{"id": "internal", "clauses": INTERNAL, "serve": {"variation": "approval_required"}}],
            "default_serve": {"variation": "read_only"}}


def texts(base: dict, proposed: dict, surface: str = "agent_tools") -> list[tuple[str, bool]]:
    lines = describe_targeting_change(base=base, proposed=proposed, risk_ranks=RANKS, fallback="read_only",
                                      surface=surface)
    return [(line.text, line.escalates) for line in lines]


def test_new_rule_for_beta__reads_as_tool_mode_escalation_for_that_audience() -> None:
    proposed = production()
    proposed["rules"].append({"id": "beta", "clauses": BETA, "serve": {"variation": "write"}})
    assert texts(production(), proposed) == [
        ("tool mode for beta_accounts (new rule): read_only (risk 1) → write (risk 4)", True)]


def test_changed_serve_of_an_existing_audience__before_and_after_with_risk() -> None:
    proposed = production()
    proposed["rules"][0]["serve"] = {"variation": "none"}
    assert texts(production(), proposed) == [
        ("tool mode for internal_users: approval_required (risk 3) → none (risk 0)", False)]


def test_split_and_default__percentages_and_risks() -> None:
    proposed = production()
    proposed["default_serve"] = {"split": [{"variation": "read_only", "weight": 95000},
                                           {"variation": "write", "weight": 5000}]}
    assert texts(production(), proposed) == [
        ("Default rule (tool mode for everyone else): read_only (risk 1) → "
         "read_only 95 % (risk 1) / write 5 % (risk 4)", True)]


def test_turned_off_removed_rule_targets_unit_and_order__each_described() -> None:
    base = production()
    base["rules"].append({"id": "beta", "clauses": BETA, "serve": {"variation": "none"}})
    proposed = production()
    proposed["rules"] = [base["rules"][1], base["rules"][0]]
    proposed["targets"] = [{"variation": "write", "values": ["acct-1"]}]
    proposed["assignment_unit"] = "userId"
    lines = dict(texts(base, proposed))
    assert lines["Rules reordered: now beta_accounts, internal_users"] is False
    assert lines["Individual targets for write (risk 4): + acct-1"] is True
    assert lines["Assignment unit: accountId → userId (every unit is bucketed anew)"] is False
    off = texts(production(), {**production(), "enabled": False})
    assert off == [("Turned off: everyone gets the fallback read_only (risk 1)", False)]
    removed = production()
    removed["rules"] = []
    assert texts(production(), removed) == [
        ("Rule for internal_users removed: approval_required (risk 3) → falls through to read_only (risk 1)", False)]


def test_unknown_surface__generic_noun() -> None:
    proposed = production()
    proposed["rules"][0]["serve"] = {"variation": "write"}
    assert texts(production(), proposed, surface="other")[0][0].startswith("value for internal_users:")
