"""The targeting form of a non-governed environment: rules, splits (in thousandths) and targets
saved and audited, both versions bumped; errors beside the field; stale forms refused; a
governed environment's form refused (changes there are proposed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from audit.constants import AuditAction
from audit.models import AuditEvent
from flags import services
from flags.forms import TargetingForm
from flags.models import Environment
from tests.factories import TEST_ACTOR
from tests.flags.support import (
    PROJECT,
    TOOL_MODE,
    assert_form_refused,
    audit_events_since,
    audit_mark,
    catalog_state,
    console_url,
    demo_targeting,
    targeting_data,
)

PLAN_RULE = {"id": "pro", "description": "Pro plan", "serve": {"variation": "write"},
             "clauses": [{"attribute": "plan", "op": "in", "values": ["pro"]}]}


@pytest.mark.django_db
def test_targeting_edit__valid_rules__saves_and_bumps_targeting_and_environment_versions(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor and the tool-mode flag's development targeting
    owner = login("owner")
    targeting = demo_targeting(TOOL_MODE, "development")
    old_version = targeting.version
    env_versions = dict(Environment.objects.filter(project__key=PROJECT).values_list("key", "version"))
    mark = audit_mark()
    # When new rules and a new default rule are saved
    response = client.post(
        console_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"),
        targeting_data(targeting, rules=[PLAN_RULE], default_variation="read_only"),
    )
    # Then the browser returns to the development card
    assert response.status_code == 302
    assert response.url == console_url("flag_detail", flag_key=TOOL_MODE) + "#env-development"
    # and the targeting holds them, one version up
    targeting.refresh_from_db()
    assert targeting.rules == [PLAN_RULE]
    assert targeting.default_serve == {"variation": "read_only"}
    assert targeting.version == old_version + 1
    assert targeting.updated_by == owner
    # and only the development environment's version rose
    after = dict(Environment.objects.filter(project__key=PROJECT).values_list("key", "version"))
    assert after == {**env_versions, "development": env_versions["development"] + 1}
    # and the change is audited against the development environment
    events = audit_events_since(mark)
    assert [(e.action, e.actor) for e in events] == [(AuditAction.TARGETING_UPDATED, owner)]
    event = events[0]
    assert event.environment_id == targeting.environment_id and event.flag_id == targeting.flag_id
    assert event.before == {"rules": [], "default_serve": {"variation": "approval_required"}, "version": old_version}
    assert event.after == {"rules": [PLAN_RULE], "default_serve": {"variation": "read_only"},
                           "version": old_version + 1}


@pytest.mark.django_db
def test_targeting_edit__split_adding_up_to_100__saves_weights_in_thousandths(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor
    login("owner")
    targeting = demo_targeting(TOOL_MODE, "development")
    mark = audit_mark()
    # When the default rule becomes a 97.5 / 2.5 split
    response = client.post(
        console_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"),
        targeting_data(targeting, default_variation=TargetingForm.SPLIT, split_read_only="97.5", split_write="2.5"),
    )
    # Then the split is stored in thousandths of a percent
    assert response.status_code == 302
    targeting.refresh_from_db()
    assert targeting.default_serve == {"split": [{"variation": "read_only", "weight": 97500},
                                                 {"variation": "write", "weight": 2500}]}
    assert [e.action for e in audit_events_since(mark)] == [AuditAction.TARGETING_UPDATED]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field", "error"),
    [
        ({"default_variation": TargetingForm.SPLIT, "split_read_only": "60", "split_write": "30"},
         "default_variation", "The split adds up to 90 %, not 100 %."),
        ({"rules": [{"clauses": [{"attribute": "plan", "op": "resembles", "values": ["pro"]}],
                     "serve": {"variation": "write"}}]},
         "rules", "rules[0].clauses[0].op: unknown operator 'resembles'"),
        ({"rules": [{"clauses": [{"attribute": "email", "op": "matches", "values": ["(unclosed"]}],
                     "serve": {"variation": "write"}}]},
         "rules", "rules[0].clauses[0].values[0]: regular expression does not compile"),
        ({"rules": [{"clauses": [{"op": "in_segment", "values": ["no_such_segment"]}],
                     "serve": {"variation": "write"}}]},
         "rules", "unknown segment(s): no_such_segment"),
        ({"rules": "[{"}, "rules", "Not valid JSON:"),
        ({"targets_read_only": "acct-7", "targets_write": "acct-7"},
         "targets_write", "'acct-7' is already targeted to 'read_only'"),
    ],
    ids=["split-not-100", "unknown-operator", "bad-regex", "unknown-segment", "malformed-json", "key-in-two-targets"],
)
def test_targeting_edit__invalid_input__shows_error_beside_field_and_saves_nothing(
    client: Any, login: Callable[[str], Any], overrides: dict[str, Any], field: str, error: str
) -> None:
    # Given an editor and the development targeting
    login("owner")
    targeting = demo_targeting(TOOL_MODE, "development")
    before = catalog_state()
    # When the targeting form is posted with one bad part
    response = client.post(console_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"),
                           targeting_data(targeting, **overrides))
    # Then the form comes back (422) with the error beside that field, and nothing changed
    assert_form_refused(response, field, error, catalog_before=before)


@pytest.mark.django_db
def test_targeting_edit__stale_version__is_refused_with_message_and_saves_nothing(
    client: Any, login: Callable[[str], Any]
) -> None:
    # Given an editor opened the development targeting form
    owner = login("owner")
    targeting = demo_targeting(TOOL_MODE, "development")
    stale_form = targeting_data(targeting, rules=[PLAN_RULE])
    # and someone else turned it off in the meantime
    services.targeting_update(targeting=targeting, actor=TEST_ACTOR, enabled=False)
    targeting.refresh_from_db()
    current_version = targeting.version
    mark = audit_mark()
    # When the editor saves the form opened on the old version
    response = client.post(console_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"), stale_form)
    # Then the save is refused with a message naming the conflict
    assert response.status_code == 422
    assert any("This targeting changed since you opened it" in e
               for e in response.context["form"].non_field_errors())
    assert "This targeting changed since you opened it" in response.content.decode()
    # and the other change stands
    targeting.refresh_from_db()
    assert targeting.version == current_version
    assert targeting.enabled is False
    assert targeting.rules == []
    assert audit_events_since(mark) == []
    assert not AuditEvent.objects.filter(actor=owner).exclude(action__startswith="auth.").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post"])
def test_targeting_edit__governed_production__answers_403_read_only_and_changes_nothing(
    client: Any, login: Callable[[str], Any], method: str
) -> None:
    # Given an editor (who may edit development) and the governed production targeting
    login("owner")
    targeting = demo_targeting(TOOL_MODE, "production")
    before = catalog_state()
    url = console_url("targeting_edit", flag_key=TOOL_MODE, environment_key="production")
    # When the editor opens or posts the production targeting form
    if method == "get":
        response = client.get(url)
    else:
        response = client.post(url, targeting_data(targeting, enabled=False, rules=[]))
    # Then it is refused as governed: changes there are proposed instead
    assert response.status_code == 403
    assert "Production is a governed environment: propose the change instead" in response.content.decode()
    assert catalog_state() == before

