"""What an approver sees of a change: every changed part of a rule in words (description,
clauses, serve, the default split), the served state per environment as real JSON and a line
diff, the governed environments a segment or flag-wide request reaches, and the estimate of
units it moves (rollouts/diff.py, rollouts/selectors.py, templates/rollouts/_cr_review.html)."""

from __future__ import annotations

import copy
import html
import json
import re
from typing import Any

import pytest
from django.utils import timezone

from flags.evaluation.targeting_schema import referenced_segments
from flags.models import Segment, Targeting, Variation
from rollouts.change_control import submitting
from rollouts.diff import describe_served_change, describe_targeting_change, json_line_diff
from rollouts.models import ChangeRequest
from telemetry.models import UnitExposure
from tests.rollouts.support import as_user, escalate, production, user

RANKS = {"baseline_v3": 0, "citation_first_v4": 1}
RULE = {"id": "beta-5", "description": "5 % of beta", "clauses": [{"op": "in_segment", "values": ["beta_accounts"]}],
        "serve": {"variation": "citation_first_v4"}}


def targeting(**changes: Any) -> dict[str, Any]:
    return {"enabled": True, "targets": [], "rules": [copy.deepcopy(RULE)], "assignment_unit": "accountId",
            "default_serve": {"variation": "baseline_v3"}, **changes}


def texts(base: dict[str, Any], proposed: dict[str, Any]) -> list[str]:
    return [line.text for line in describe_targeting_change(base=base, proposed=proposed, risk_ranks=RANKS,
                                                            fallback="baseline_v3", surface="ai_profile")]


def test_rule_description_changed__one_line_with_old_and_new() -> None:
    proposed = targeting()
    proposed["rules"][0]["description"] = "Beta accounts, first wave"
    assert texts(targeting(), proposed) == [
        "Description of rule beta-5 (beta_accounts): “5 % of beta” → “Beta accounts, first wave”"]


def test_rule_clause_changed__same_rule_by_id__audience_line_not_a_new_rule() -> None:
    proposed = targeting()
    proposed["rules"][0]["clauses"] = [{"attribute": "plan", "op": "in", "values": ["beta", "pro"]}]
    lines = texts(targeting(), proposed)
    assert lines == ["Audience of rule beta-5: beta_accounts → plan in beta, pro "
                     "(served citation_first_v4 (risk 1))"]


def test_default_split_changed__percentages_before_and_after() -> None:
    five = {"split": [{"variation": "baseline_v3", "weight": 95_000}, {"variation": "citation_first_v4", "weight": 5_000}]}
    fifty = {"split": [{"variation": "baseline_v3", "weight": 50_000},
                       {"variation": "citation_first_v4", "weight": 50_000}]}
    assert texts(targeting(default_serve=five), targeting(default_serve=fifty)) == [
        "Default rule (AI profile for everyone else): baseline_v3 95 % (risk 0) / citation_first_v4 5 % (risk 1) → "
        "baseline_v3 50 % (risk 0) / citation_first_v4 50 % (risk 1)"]


def test_served_change__segment_members_and_values__in_words() -> None:
    segment = {"included_keys": ["a"], "excluded_keys": [], "rules": []}
    before = {"enabled": True, "fallback": "baseline_v3", "json_schema": None, **targeting(),
              "variations": {"baseline_v3": {"value": {"t": 0.2}, "risk_rank": 0},
                             "citation_first_v4": {"value": {"t": 0.2}, "risk_rank": 1}},
              "segments": {"beta_accounts": segment}}
    after = copy.deepcopy(before)
    after["segments"]["beta_accounts"]["included_keys"] = ["a", "b"]
    after["variations"]["citation_first_v4"]["value"] = {"t": 0.3}
    assert [line.text for line in describe_served_change(before=before, after=after)] == [
        "segment beta_accounts: 1 key(s) included: b", "Value of citation_first_v4: t 0.2 → 0.3"]


def test_json_line_diff__only_the_changed_lines_marked() -> None:
    lines = json_line_diff({"a": 1, "b": [1, 2]}, {"a": 2, "b": [1, 2]})
    assert [(line.kind, line.text.strip()) for line in lines if line.kind in ("added", "removed")] == [
        ("removed", '"a": 1,'), ("added", '"a": 2,')]
    assert json_line_diff({"a": 1}, {"a": 1}) == []


# --- the page ----------------------------------------------------------------------------------


def shown(page: str, testid: str) -> list[str]:
    """The text of every element with this data-testid."""
    return [html.unescape(re.sub(r"<[^>]+>", "", body))
            for body in re.findall(rf'data-testid="{testid}"[^>]*>(.*?)</(?:pre|p|ul|div)>', page, re.S)]


@pytest.mark.django_db
def test_targeting_request_page__json_is_the_stored_states_and_one_environment(client, demo) -> None:
    change_request = escalate()
    page = as_user(client, "pm").get(f"/p/support-assistant/changes/{change_request.pk}/").content.decode()
    assert json.loads(shown(page, "cr-json-base")[0]) == change_request.base_state
    assert json.loads(shown(page, "cr-json-proposed")[0]) == change_request.proposed
    [served_after] = shown(page, "cr-served-after")
    assert json.loads(served_after) == next(iter(change_request.served_states.values()))
    assert page.count('data-testid="cr-environment"') == 1 and "support_agent_tool_mode in Production" in page
    [diff] = re.findall(r'data-testid="cr-json-diff">(.*?)</pre>', page, re.S)
    lines = [(kind, html.unescape(text)) for kind, text in re.findall(r'<span class="json-(\w+)">(.*?)</span>', diff)]
    added = [text for kind, text in lines if kind == "added"]
    assert all(text.startswith("+ ") for text in added) and any('"write"' in text for text in added)
    assert any('"id": "beta"' in text for text in added)
    assert not [text for kind, text in lines if kind == "removed"]  # a rule added, nothing taken away
    assert "True" not in diff and "'" not in html.unescape(diff)  # JSON, not Python's repr
    assert shown(page, "cr-estimate") == ["Units affected: No exposures in the last day: no estimate."]


@pytest.mark.django_db
def test_targeting_request_page__estimate_from_the_last_days_exposures(client, demo) -> None:
    """Given accounts seen in production today: the beta accounts listed in the segment move to
    write; an internal account and the excluded beta account stay; whether the others are beta
    (plan attribute) is not recorded."""
    change_request = escalate()
    beta = Segment.objects.get(key="beta_accounts")
    listed, excluded = beta.included_keys, beta.excluded_keys
    internal = Segment.objects.get(key="internal_users").included_keys[:1]
    others = [f"acct-other-{n}" for n in range(6)]
    now = timezone.now()
    rows = [(u, "read_only") for u in [*listed, *excluded, *others]] + [(u, "approval_required") for u in internal]
    UnitExposure.objects.bulk_create([
        UnitExposure(flag_id=change_request.flag_id, environment_id=change_request.environment_id, variant=variant,
                     unit=unit, first_seen=now, last_seen=now) for unit, variant in rows])
    page = as_user(client, "pm").get(f"/p/support-assistant/changes/{change_request.pk}/").content.decode()
    total = len(rows)
    changed, unknown = len(listed) / total * 100, len(others) / total * 100
    [estimate] = shown(page, "cr-estimate")
    assert estimate.startswith(f"Units affected: {changed:.1f}".removesuffix(".0") + f" % of {total} units seen")
    assert f"({unknown:.1f}".removesuffix(".0") + " % depend on attributes not recorded)" in estimate


@pytest.mark.django_db
def test_segment_request_page__lists_each_governed_environment_whose_rules_use_it(client, demo) -> None:
    segment = Segment.objects.get(key="beta_accounts")
    change_request = submitting.segment_change_submit(
        segment=segment, changes={"included_keys": [*segment.included_keys, "acct-new-1"]},
        actor=user("owner"), reason="one more beta account")
    assert isinstance(change_request, ChangeRequest)
    using = [t for t in Targeting.objects.filter(environment__is_governed=True, enabled=True)
             .select_related("flag", "environment") if "beta_accounts" in referenced_segments(t.rules)]
    assert using  # the demo's production profile rule
    page = as_user(client, "pm").get(f"/p/support-assistant/changes/{change_request.pk}/").content.decode()
    assert page.count('data-testid="cr-environment"') == len(using)
    for targeting_row in using:
        assert f"{targeting_row.flag.key} in {targeting_row.environment.name}" in page
    assert "segment beta_accounts: 1 key(s) included: acct-new-1" in shown(page, "cr-environment-lines")[0]


@pytest.mark.django_db
def test_flag_wide_request_page__value_change_in_every_governed_environment(client, demo) -> None:
    v4 = Variation.objects.select_related("flag").get(flag__key="support_assistant_profile", key="citation_first_v4")
    value = {**v4.value, "temperature": 0.3}
    _, change_request = submitting.variation_change_submit(variation=v4, actor=user("owner"), reason="warmer",
                                                         value=value)
    governed = Targeting.objects.filter(flag=v4.flag, environment__is_governed=True).select_related("environment")
    page = as_user(client, "pm").get(f"/p/support-assistant/changes/{change_request.pk}/").content.decode()
    assert page.count('data-testid="cr-environment"') == governed.count() > 0
    for row in governed:
        assert f"support_assistant_profile in {row.environment.name}" in page
    assert all("Value of citation_first_v4: temperature 0.2 → 0.3" in lines
               for lines in shown(page, "cr-environment-lines"))
    assert json.loads(shown(page, "cr-json-proposed")[0]) == change_request.proposed
    assert production("support_assistant_profile").flag.variations.get(key="citation_first_v4").value == v4.value
