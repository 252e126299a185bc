"""The rule editor (flags/rule_builder.py, RuleEditorForm in flags/forms.py, flags/rule_editor_views.py):
builder fields read into the exact stored rules; the JSON view and the builder convert into each
other without loss; every button keeps what was typed; bad clauses are refused beside their
field with nothing written; the buttons' endpoint is refused to those who may not edit; the
editor works on the direct targeting form, the governed proposal and the segment form."""

from __future__ import annotations

import json
import re
from html import unescape
from typing import Any

import pytest

from audit.constants import AuditAction
from audit.models import AuditEvent
from flags import services
from flags.models import Project, Segment, Targeting
from rollouts.models import ChangeRequest
from tests.factories import TEST_ACTOR
from tests.flags.support import (
    HTMX,
    PROFILE,
    TOOL_MODE,
    assert_form_refused,
    audit_events_since,
    audit_mark,
    catalog_state,
    console_url,
    demo_targeting,
    field_errorlist,
    targeting_data,
)
from tests.html_forms import fields as fields_of

pytestmark = pytest.mark.django_db


# --- helpers ------------------------------------------------------------------------------------


def editor_url(flag_key: str = TOOL_MODE, environment_key: str = "development") -> str:
    return console_url("targeting_rule_editor", flag_key=flag_key, environment_key=environment_key)


def press(client: Any, url: str, data: dict[str, Any], op: str) -> tuple[Any, dict[str, Any]]:
    """Press one of the editor's buttons: post the form with its op; answers the response and the
    editor's fields as they now stand."""
    response = client.post(url, {**data, "op": op}, headers=HTMX)
    assert response.status_code == 200, response.content.decode()[:500]
    return response, fields_of(response.content.decode())


def focus_of(response: Any) -> str:
    match = re.search(r'data-focus="([^"]+)"', response.content.decode())
    return match.group(1) if match else ""


def rule_fields(data: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in data.items() if name.startswith("rule-") or name in ("rules_mode", "rules")}


# Two rules typed in the builder of support_agent_tool_mode (variations none, read_only,
# approval_required, write): the fields, and the stored rules they stand for.
TYPED = {
    "rules_mode": "builder",
    "rule-0-id": "internal", "rule-0-description": "Internal support team", "rule-0-serve": "approval_required",
    "rule-0-split-none": "", "rule-0-split-read_only": "", "rule-0-split-approval_required": "", "rule-0-split-write": "",
    "rule-0-clause-0-op": "in_segment", "rule-0-clause-0-segments": "internal_users",
    "rule-0-clause-0-attribute": "", "rule-0-clause-0-values": "", "rule-0-clause-0-kind": "text",
    "rule-1-id": "rule-2", "rule-1-description": "Plan in beta, not on old apps", "rule-1-serve": "__split__",
    "rule-1-split-read_only": "97.5", "rule-1-split-write": "2.5", "rule-1-split-none": "",
    "rule-1-split-approval_required": "0",
    "rule-1-clause-0-attribute": "plan", "rule-1-clause-0-op": "in", "rule-1-clause-0-values": "beta\n  trial  \n\n",
    "rule-1-clause-0-kind": "text",
    "rule-1-clause-1-attribute": "appVersion", "rule-1-clause-1-op": "semver_lt", "rule-1-clause-1-values": "2.1.0",
    "rule-1-clause-1-negate": "on", "rule-1-clause-1-kind": "text",
    "rule-1-clause-2-attribute": "seats", "rule-1-clause-2-op": "in", "rule-1-clause-2-values": "10\n2.5",
    "rule-1-clause-2-kind": "number",
    "rule-1-clause-3-attribute": "trusted", "rule-1-clause-3-op": "equals", "rule-1-clause-3-values": "True",
    "rule-1-clause-3-kind": "boolean",
}
TYPED_RULES = [
    {"id": "internal", "description": "Internal support team",
     "clauses": [{"op": "in_segment", "values": ["internal_users"]}], "serve": {"variation": "approval_required"}},
    {"id": "rule-2", "description": "Plan in beta, not on old apps",
     "clauses": [{"attribute": "plan", "op": "in", "values": ["beta", "trial"]},
                 {"attribute": "appVersion", "op": "semver_lt", "values": ["2.1.0"], "negate": True},
                 {"attribute": "seats", "op": "in", "values": [10, 2.5]},
                 {"attribute": "trusted", "op": "equals", "values": [True]}],
     "serve": {"split": [{"variation": "read_only", "weight": 97_500}, {"variation": "write", "weight": 2_500}]}},
]


def typed_form(targeting: Targeting, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {**targeting_data(targeting), **TYPED}
    data.pop("rules", None)
    data.update(overrides)
    return {name: value for name, value in data.items() if value is not None}


# --- builder fields → the stored rules ------------------------------------------------------------


def test_targeting_edit__builder_fields__save_the_exact_rules_in_order_with_ids_negate_and_weights(
        client: Any, login: Any) -> None:
    # Given the owner and development's targeting of the tool mode flag (no rules yet)
    owner = login("owner")
    targeting = demo_targeting(TOOL_MODE, "development")
    assert targeting.rules == []
    mark = audit_mark()
    # When they save two rules built in the builder
    response = client.post(console_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"),
                           typed_form(targeting))
    # Then the targeting holds exactly those rules: order, ids, negate, values typed, weights in thousandths
    assert response.status_code == 302, response.content.decode()[:2000]
    targeting.refresh_from_db()
    assert targeting.rules == TYPED_RULES
    assert [(e.action, e.actor) for e in audit_events_since(mark)] == [(AuditAction.TARGETING_UPDATED, owner)]


def test_targeting_edit__page__shows_the_stored_rules_in_the_builder(client: Any, login: Any) -> None:
    # Given production's rules of the profile flag (the internal rule, then a 95/5 split on beta)
    login("owner")
    services.targeting_update(targeting=demo_targeting(PROFILE, "staging"), actor=TEST_ACTOR,
                              rules=demo_targeting(PROFILE, "production").rules)
    # When the staging targeting page is opened
    page = client.get(console_url("targeting_edit", flag_key=PROFILE, environment_key="staging")).content.decode()
    # Then the builder shows them, the split with its total, and posting the page unchanged gives them back
    fields = fields_of(page)
    assert fields["rules_mode"] == "builder"
    assert (fields["rule-0-id"], fields["rule-0-clause-0-op"], fields["rule-0-clause-0-segments"]) == (
        "internal", "in_segment", "internal_users")
    assert (fields["rule-1-serve"], fields["rule-1-split-baseline_v3"], fields["rule-1-split-citation_first_v4"]) == (
        "__split__", "95", "5")
    assert "adds up to 100 %" in page
    assert 'aria-label="Move rule 2 up"' in page and 'aria-label="Remove rule 1"' in page
    assert 'aria-label="Add a clause to rule 2"' in page


def test_builder__a_rule_left_untouched__keeps_its_stored_shape(client: Any, login: Any) -> None:
    # Given a stored rule whose clause says "negate": false (the builder writes no negate when false)
    login("owner")
    targeting = demo_targeting(TOOL_MODE, "development")
    stored = [{"id": "eu", "clauses": [{"attribute": "region", "op": "equals", "values": ["eu"], "negate": False}],
               "serve": {"variation": "none"}}]
    targeting = services.targeting_update(targeting=targeting, actor=TEST_ACTOR, rules=stored)
    url = console_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development")
    # When the page is submitted from the builder with only the default rule changed
    data = {**fields_of(client.get(url).content.decode()), "default_variation": "none"}
    assert client.post(url, data).status_code == 302
    # Then the rule is stored as it was, so no diff reports a rule nobody touched
    targeting.refresh_from_db()
    assert targeting.rules == stored and targeting.default_serve == {"variation": "none"}


# --- the JSON view ------------------------------------------------------------------------------


def test_json_to_builder_to_json__round_trips_the_rules(client: Any, login: Any) -> None:
    # Given an editor in the JSON view, with rules of every kind typed there
    login("owner")
    targeting = demo_targeting(TOOL_MODE, "development")
    typed = [*TYPED_RULES, {"clauses": [{"attribute": "email", "op": "matches", "values": [r"^\w+@example\.com$"]},
                                        {"attribute": "score", "op": "gte", "values": [0.75]}],
                            "serve": {"variation": "none"}}]
    text = json.dumps(typed, indent=2)
    # When they switch to the builder
    response, fields = press(client, editor_url(), {**targeting_data(targeting), "rules_mode": "json", "rules": text},
                             "switch-to-builder")
    # Then the builder shows those rules, as fields
    assert fields["rules_mode"] == "builder" and "rules" not in fields
    assert fields["rule-1-clause-1-negate"] == "on" and fields["rule-1-clause-2-kind"] == "number"
    assert fields["rule-2-clause-0-values"] == r"^\w+@example\.com$" and fields["rule-2-id"] == ""
    # and switching back gives the same JSON list
    _, back = press(client, editor_url(), {**targeting_data(targeting), **fields}, "switch-to-json")
    assert back["rules_mode"] == "json"
    assert json.loads(back["rules"]) == typed


def test_switch_to_builder__rules_it_cannot_show__stay_in_json_with_the_reason(client: Any, login: Any) -> None:
    login("owner")
    targeting = demo_targeting(TOOL_MODE, "development")
    mixed = json.dumps([{"clauses": [{"attribute": "tier", "op": "in", "values": ["gold", 3]}],
                         "serve": {"variation": "none"}}])
    for text, why in ((mixed, "is not text"), ("[{", "Not valid JSON")):
        response, fields = press(client, editor_url(), {**targeting_data(targeting), "rules_mode": "json",
                                                        "rules": text}, "switch-to-builder")
        assert fields["rules_mode"] == "json" and fields["rules"] == text  # nothing typed is lost
        assert why in field_errorlist(response.content.decode(), "rules")
        assert focus_of(response) == "id_rules"


def test_submit_from_json_view__json_is_the_source_of_truth(client: Any, login: Any) -> None:
    # Given builder fields left in the post, but the JSON view chosen
    login("owner")
    targeting = demo_targeting(TOOL_MODE, "development")
    rules = [{"id": "from-json", "clauses": [{"attribute": "plan", "op": "in", "values": ["pro"]}],
              "serve": {"variation": "none"}}]
    data = typed_form(targeting, rules_mode="json", rules=json.dumps(rules))
    # When it is submitted
    assert client.post(console_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"),
                       data).status_code == 302
    # Then the JSON's rules were saved, not the builder's
    targeting.refresh_from_db()
    assert targeting.rules == rules


# --- the buttons ----------------------------------------------------------------------------------


def test_add_rule__keeps_every_typed_value_and_focuses_the_new_description(client: Any, login: Any) -> None:
    login("owner")
    data = typed_form(demo_targeting(TOOL_MODE, "development"))
    response, fields = press(client, editor_url(), data, "add-rule")
    assert {name: fields.get(name) for name in rule_fields(data)} == {
        **rule_fields(data), "rule-1-clause-0-values": "beta\n  trial  \n\n"}
    assert fields["rule-2-id"] == "rule-3" and fields["rule-2-description"] == ""
    assert fields["rule-2-clause-0-op"] == "in" and fields["rule-2-serve"] == ""
    assert focus_of(response) == "id_rule-2-description"
    assert "data-rules-changed" not in response.content.decode()  # an empty rule: no preview yet


def test_remove_rule__moves_the_next_rule_up_with_its_values_and_focuses_it(client: Any, login: Any) -> None:
    login("owner")
    data = typed_form(demo_targeting(TOOL_MODE, "development"))
    response, fields = press(client, editor_url(), data, "remove-rule-0")
    expected = {re.sub(r"^rule-1-", "rule-0-", name): value for name, value in rule_fields(data).items()
                if not name.startswith("rule-0-")}
    assert rule_fields(fields) == expected
    assert focus_of(response) == "id_rule-0-description"
    assert "data-rules-changed" in response.content.decode()
    # Removing the last rule moves the focus to "Add a rule"
    response, fields = press(client, editor_url(), {**targeting_data(demo_targeting(TOOL_MODE, "development")),
                                                    **fields}, "remove-rule-0")
    assert not any(name.startswith("rule-") for name in fields) and focus_of(response) == "rule-editor-add-rule"


def test_move_rule__swaps_the_rules_and_keeps_the_focus_on_the_moved_rule(client: Any, login: Any) -> None:
    login("owner")
    data = typed_form(demo_targeting(TOOL_MODE, "development"))
    response, fields = press(client, editor_url(), data, "move-rule-1-up")
    swap = {"rule-0-": "rule-1-", "rule-1-": "rule-0-"}
    expected = {re.sub(r"^rule-[01]-", lambda m: swap[m.group(0)], name): value
                for name, value in rule_fields(data).items()}
    assert rule_fields(fields) == expected
    # The moved rule is first now: it has no "up" any more, so its "down" gets the focus
    assert focus_of(response) == "rule-0-move-down"


def test_add_and_remove_clause__keep_the_other_clauses(client: Any, login: Any) -> None:
    login("owner")
    data = typed_form(demo_targeting(TOOL_MODE, "development"))
    response, fields = press(client, editor_url(), data, "add-clause-0")
    assert rule_fields(fields) | {} == {**rule_fields(data), "rule-1-clause-0-values": "beta\n  trial  \n\n",
                                        "rule-0-clause-1-attribute": "", "rule-0-clause-1-op": "in",
                                        "rule-0-clause-1-values": "", "rule-0-clause-1-kind": "text"}
    assert focus_of(response) == "id_rule-0-clause-1-attribute"
    # Removing clause 2 of rule 2 moves clauses 3 and 4 up
    response, fields = press(client, editor_url(), data, "remove-clause-1-1")
    assert (fields["rule-1-clause-1-attribute"], fields["rule-1-clause-2-attribute"]) == ("seats", "trusted")
    assert "rule-1-clause-3-attribute" not in fields and "rule-1-clause-1-negate" not in fields
    assert fields["rule-0-clause-0-segments"] == "internal_users"
    assert focus_of(response) == "id_rule-1-clause-1-attribute"


def test_editor_endpoint__unknown_op__400_and_nothing_written(client: Any, login: Any) -> None:
    login("owner")
    before = catalog_state()
    response = client.post(editor_url(), {**typed_form(demo_targeting(TOOL_MODE, "development")), "op": "explode"},
                           headers=HTMX)
    assert response.status_code == 400 and catalog_state() == before


# --- errors beside the field, nothing written -------------------------------------------------------


@pytest.mark.parametrize(("overrides", "field", "error"), [
    ({"rule-1-clause-0-op": "resembles"}, "rule-1-clause-0-op", "Select a valid choice"),
    ({"rule-1-clause-0-op": "matches", "rule-1-clause-0-values": "(unclosed"}, "rule-1-clause-0-values",
     "Value 1: regular expression does not compile"),
    ({"rule-1-clause-0-values": "  \n "}, "rule-1-clause-0-values", "Give at least one value, one per line."),
    ({"rule-1-clause-2-values": "ten"}, "rule-1-clause-2-values", "“ten” is not a number."),
    ({"rule-1-clause-1-values": "2.x"}, "rule-1-clause-1-values", "Value 1: &#x27;2.x&#x27; is not a semantic version"),
    ({"rule-1-split-write": "1.5"}, "rule-1-serve", "The split adds up to 99 % — 1 % short: it must add up to 100 %."),
    ({"rule-1-clause-0-attribute": ""}, "rule-1-clause-0-attribute", "Name a context attribute"),
    ({"rule-0-serve": ""}, "rule-0-serve", "Choose what this rule serves."),
], ids=["unknown-operator", "regex", "empty-values", "not-a-number", "semver", "split-not-100", "no-attribute",
        "no-serve"])
def test_targeting_edit__bad_clause__refused_beside_its_field(client: Any, login: Any, overrides: dict[str, str],
                                                              field: str, error: str) -> None:
    login("owner")
    before = catalog_state()
    response = client.post(console_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"),
                           typed_form(demo_targeting(TOOL_MODE, "development"), **overrides))
    assert response.status_code == 422
    assert unescape(error) in " ".join(response.context["form"].errors.get(field, [])), dict(response.context["form"].errors)
    assert error in field_errorlist(response.content.decode(), field)
    assert catalog_state() == before


def test_targeting_edit__unknown_segment__refused_beside_the_segments(client: Any, login: Any) -> None:
    # Given a segment clause naming a segment of another project (a forged post)
    login("owner")
    before = catalog_state()
    response = client.post(console_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"),
                           typed_form(demo_targeting(TOOL_MODE, "development"),
                                      **{"rule-0-clause-0-segments": ["internal_users", "their_only"]}))
    # Then it is refused beside that clause's segments, and nothing is written
    assert response.status_code == 422
    errors = response.context["form"].errors
    assert errors["rule-0-clause-0-segments"] == ["Unknown segment(s): their_only"]
    assert 'id="id_rule-0-clause-0-segments_error"' in response.content.decode()
    assert catalog_state() == before


def test_proposal__bad_clause_in_builder__beside_the_field_no_change_request(client: Any, login: Any) -> None:
    login("owner")
    before = catalog_state()
    targeting = demo_targeting(TOOL_MODE, "production")
    data = {**typed_form(targeting, **{"rule-1-clause-0-op": "matches", "rule-1-clause-0-values": "[z-a]"}),
            "reason": "try"}
    response = client.post(console_url("rollouts:targeting_propose", flag_key=TOOL_MODE, environment_key="production"),
                           data)
    assert_form_refused(response, "rule-1-clause-0-values", "regular expression does not compile", before)
    assert not ChangeRequest.objects.exists()


# --- the three places ------------------------------------------------------------------------------


BETA_WRITE = {"rule-1-id": "rule-2", "rule-1-description": "Beta accounts", "rule-1-serve": "write",
              "rule-1-clause-0-op": "in_segment", "rule-1-clause-0-segments": ["beta_accounts"],
              "rule-1-clause-0-attribute": "", "rule-1-clause-0-values": "", "rule-1-clause-0-kind": "text"}


def _proposal_with_beta_write(client: Any) -> dict[str, Any]:
    url = console_url("rollouts:targeting_propose", flag_key=TOOL_MODE, environment_key="production")
    page = fields_of(client.get(url).content.decode())
    return {**page, **BETA_WRITE, "reason": "Beta accounts file tickets themselves"}


def test_proposal__preview_sees_the_builders_rules(client: Any, login: Any) -> None:
    # Given the owner on production's proposal page, a rule serving write to beta accounts built in the builder
    login("owner")
    data = _proposal_with_beta_write(client)
    assert data["rules_mode"] == "builder"
    # When the page asks for its preview
    response = client.post(console_url("rollouts:targeting_preview", flag_key=TOOL_MODE, environment_key="production"),
                           data, headers=HTMX)
    # Then it says what the built rule needs
    text = response.content.decode()
    assert "This change needs 2 approvals" in text and "write (risk 4) becomes reachable" in text
    # and an incomplete rule is named in the builder's words
    incomplete = client.post(console_url("rollouts:targeting_preview", flag_key=TOOL_MODE,
                                         environment_key="production"), {**data, "rule-1-serve": ""}, headers=HTMX)
    assert "Rule 2: serves: Choose what this rule serves." in incomplete.content.decode()


def test_proposal__submitted_from_the_builder__opens_a_change_request_with_those_rules(client: Any, login: Any) -> None:
    login("owner")
    stored = demo_targeting(TOOL_MODE, "production").rules
    response = client.post(console_url("rollouts:targeting_propose", flag_key=TOOL_MODE, environment_key="production"),
                           _proposal_with_beta_write(client))
    change_request = ChangeRequest.objects.get()
    assert response.status_code == 302 and change_request.required_approvals == 2
    assert change_request.proposed["rules"] == [*stored, {
        "id": "rule-2", "description": "Beta accounts", "clauses": [{"op": "in_segment", "values": ["beta_accounts"]}],
        "serve": {"variation": "write"}}]
    assert demo_targeting(TOOL_MODE, "production").rules == stored  # waits for approval


def test_operator__roll_back_by_removing_a_rule_in_the_builder__applies_at_once(client: Any, login: Any) -> None:
    # Given the operator on the profile flag's production proposal ("Roll back…")
    login("operator")
    url = console_url("rollouts:targeting_propose", flag_key=PROFILE, environment_key="production")
    page = fields_of(client.get(url).content.decode())
    stored = demo_targeting(PROFILE, "production").rules
    # When they remove the 5 % split rule with the builder's button and submit
    _, fields = press(client, editor_url(PROFILE, "production"), page, "remove-rule-1")
    response = client.post(url, {**{k: v for k, v in page.items() if not k.startswith("rule-")}, **fields,
                                 "reason": "stale citations"})
    # Then it applies at once: production keeps only the internal rule
    assert response.status_code == 302 and not ChangeRequest.objects.exists()
    assert demo_targeting(PROFILE, "production").rules == stored[:1]


def test_segment_create__builder__saves_the_clauses(client: Any, login: Any, demo: Project) -> None:
    login("owner")
    mark = audit_mark()
    response = client.post(console_url("rollouts:segment_create"), {
        "key": "eu_pro", "name": "EU pro", "rules_mode": "builder",
        "rule-0-description": "Pro in the EU",
        "rule-0-clause-0-attribute": "region", "rule-0-clause-0-op": "in", "rule-0-clause-0-values": "eu-west\neu-central",
        "rule-0-clause-1-attribute": "plan", "rule-0-clause-1-op": "equals", "rule-0-clause-1-values": "pro",
        "rule-1-clause-0-op": "in_segment", "rule-1-clause-0-segments": ["beta_accounts"], "rule-1-clause-0-negate": "on",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Segment.objects.get(project=demo, key="eu_pro").rules == [
        {"description": "Pro in the EU", "clauses": [{"attribute": "region", "op": "in", "values": ["eu-west", "eu-central"]},
                                                     {"attribute": "plan", "op": "equals", "values": ["pro"]}]},
        {"clauses": [{"op": "in_segment", "values": ["beta_accounts"], "negate": True}]},
    ]
    assert [e.action for e in audit_events_since(mark)] == [AuditAction.SEGMENT_CREATED]


def test_segment_edit__page_shows_the_builder_without_the_segment_itself(client: Any, login: Any) -> None:
    login("owner")
    page = client.get(console_url("rollouts:segment_edit", segment_key="beta_accounts")).content.decode()
    fields = fields_of(page)
    assert (fields["rules_mode"], fields["rule-0-clause-0-attribute"], fields["rule-0-clause-0-values"]) == (
        "builder", "plan", "beta")
    assert 'value="internal_users"' in page and 'value="beta_accounts"' not in page
    assert "?segment=beta_accounts" in page
    assert "rule-0-serve" not in page  # a segment's rules serve nothing


def test_segment_editor_endpoint__add_rule_keeps_values(client: Any, login: Any) -> None:
    login("owner")
    data = {"rules_mode": "builder", "name": "kept", "rule-0-clause-0-attribute": "plan", "rule-0-clause-0-op": "in",
            "rule-0-clause-0-values": "beta"}
    response, fields = press(client, console_url("segment_rule_editor"), data, "add-rule")
    assert (fields["rule-0-clause-0-attribute"], fields["rule-0-clause-0-values"]) == ("plan", "beta")
    assert fields["rule-1-clause-0-op"] == "in" and "rule-1-id" not in fields
    assert focus_of(response) == "id_rule-1-description"


# --- permissions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("person", "environment_key", "status"), [
    ("pm", "development", 403), ("auditor", "production", 403), ("operator", "development", 403),
    ("operator", "production", 200), ("owner", "development", 200),
])
def test_targeting_editor_endpoint__who_may_use_it(client: Any, login: Any, person: str, environment_key: str,
                                                   status: int) -> None:
    login(person)
    before = AuditEvent.objects.exclude(action__startswith="auth.").count()
    data = {**targeting_data(demo_targeting(TOOL_MODE, environment_key)), "rules_mode": "builder", "op": "add-rule"}
    response = client.post(editor_url(environment_key=environment_key), data, headers=HTMX)
    assert response.status_code == status
    if status == 403:
        assert response["HX-Retarget"] == "#messages" and b"rule-editor" not in response.content
    assert AuditEvent.objects.exclude(action__startswith="auth.").count() == before


def test_editor_endpoints__another_projects_member__404(client: Any, login: Any, other_project: Project,
                                                        make_user: Any) -> None:
    outsider = make_user("other_editor")
    services.membership_grant(project=other_project, user=outsider, role="editor", actor=TEST_ACTOR)
    client.force_login(outsider)
    data = {"rules_mode": "builder", "op": "add-rule"}
    assert client.post(editor_url(), data, headers=HTMX).status_code == 404
    assert client.post(console_url("segment_rule_editor"), data, headers=HTMX).status_code == 404
    viewer = make_user("a_viewer")
    services.membership_grant(project=Project.objects.get(key="support-assistant"), user=viewer, role="viewer",
                              actor=TEST_ACTOR)
    client.force_login(viewer)
    assert client.post(console_url("segment_rule_editor"), data, headers=HTMX).status_code == 403
