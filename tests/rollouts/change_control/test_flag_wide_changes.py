"""Flag-wide changes reach every environment at once: a new value for a variation served in
a governed environment, a new fallback or a new JSON Schema waits for approval; the rest of
the edit saves at once."""

from __future__ import annotations

import copy

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from flags.models import Flag, Variation
from notifications.models import Notification
from rollouts.change_control import applying, approving, submitting, wording
from rollouts.models import ChangeRequest
from tests.rollouts.support import user

pytestmark = pytest.mark.django_db
PROFILE = "support_assistant_profile"
TOOL_MODE = "support_agent_tool_mode"


def flag(key: str = PROFILE) -> Flag:
    return Flag.objects.select_related("fallback_variation", "project").get(key=key)


def variation(key: str, flag_key: str = PROFILE) -> Variation:
    return Variation.objects.select_related("flag").get(flag__key=flag_key, key=key)


def warmer_v4() -> dict:
    value = copy.deepcopy(variation("citation_first_v4").value)
    value["temperature"] = 0.3
    return value


def test_served_value__held_in_a_request_other_fields_save_at_once(demo) -> None:
    v4 = variation("citation_first_v4")
    old_value = copy.deepcopy(v4.value)
    saved, change_request = submitting.variation_change_submit(
        variation=v4, actor=user("owner"), reason="warmer answers", value=warmer_v4(), name="Citation first v4.1")
    assert isinstance(change_request, ChangeRequest) and change_request.kind == "flag"
    assert change_request.environment is None and change_request.required_approvals == 1
    assert [r["code"] for r in change_request.reasons] == ["value_changed"]
    assert variation("citation_first_v4").value == old_value  # held
    assert saved.name == "Citation first v4.1"  # the rest saved
    lines = [line.text for line in wording.describe_request(change_request)]
    assert lines == ["Value of citation_first_v4 (served in Production): temperature 0.2 → 0.3"]
    waiting = Notification.objects.filter(kind="change_request.waiting")
    assert sorted(waiting.values_list("recipient__username", flat=True)) == ["lead", "pm"]


def test_served_value__approved_and_applied__value_changes_audited_with_the_request(demo) -> None:
    _, change_request = submitting.variation_change_submit(variation=variation("citation_first_v4"),
                                                         actor=user("owner"), reason="warmer", value=warmer_v4())
    with pytest.raises(ValidationError, match="own request"):
        approving.change_request_approve(change_request=change_request, actor=user("owner"))
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    applied = applying.change_request_apply(change_request=change_request, actor=user("owner"))
    assert applied.status == "applied"
    assert variation("citation_first_v4").value["temperature"] == 0.3
    event = AuditEvent.objects.get(action="variation.updated", change_request_id=change_request.pk)
    assert event.before["value"]["temperature"] == 0.2


def test_unserved_value__applies_at_once(demo) -> None:
    # "write" is not reachable in production: its value may change without approval
    saved, change_request = submitting.variation_change_submit(variation=variation("write", TOOL_MODE),
                                                             actor=user("owner"), value="write_v2")
    assert change_request is None and saved.value == "write_v2"


def test_fallback_and_schema__held_name_saved(demo) -> None:
    profile = flag()
    schema = copy.deepcopy(profile.json_schema)
    schema["properties"]["temperature"]["maximum"] = 1
    saved, change_request = submitting.contract_change_submit(
        flag=profile, actor=user("owner"), reason="safer default", expected_version=profile.version,
        fallback_variation_key="fallback_human_review", json_schema=schema, name="Profile (renamed)")
    assert saved.name == "Profile (renamed)" and saved.fallback_variation.key == "baseline_v3"
    assert saved.json_schema["properties"]["temperature"]["maximum"] == 2
    assert sorted(r["code"] for r in change_request.reasons) == ["fallback_changed", "schema_changed"]
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    applying.change_request_apply(change_request=change_request, actor=user("owner"))
    applied = flag()
    assert applied.fallback_variation.key == "fallback_human_review"
    assert applied.json_schema["properties"]["temperature"]["maximum"] == 1


def test_invalid_value__refused_before_anything_is_held(demo) -> None:
    bad = warmer_v4()
    bad["temperature"] = 9
    with pytest.raises(ValidationError):
        submitting.variation_change_submit(variation=variation("citation_first_v4"), actor=user("owner"),
                                         reason="x", value=bad)
    assert not ChangeRequest.objects.exists()


def test_reason_required_when_held(demo) -> None:
    with pytest.raises(ValidationError, match="Say why"):
        submitting.variation_change_submit(variation=variation("citation_first_v4"), actor=user("owner"),
                                         value=warmer_v4())
    assert not ChangeRequest.objects.exists()


def test_two_requests_on_one_value__second_conflicts_when_first_applied(demo) -> None:
    _, first = submitting.variation_change_submit(variation=variation("citation_first_v4"), actor=user("owner"),
                                                reason="0.3", value=warmer_v4())
    cooler = warmer_v4()
    cooler["temperature"] = 0.1
    _, second = submitting.variation_change_submit(variation=variation("citation_first_v4"), actor=user("owner"),
                                                 reason="0.1", value=cooler)
    for change_request in (first, second):
        approving.change_request_approve(change_request=change_request, actor=user("pm"))
    applying.change_request_apply(change_request=first, actor=user("owner"))
    result = applying.change_request_apply(change_request=second, actor=user("owner"))
    assert result.status == "conflicted"
    assert variation("citation_first_v4").value["temperature"] == 0.3
    lines = [line.text for line in wording.describe_conflict(result)]
    assert lines == ["Value of citation_first_v4 (served in Production): temperature 0.2 → 0.3"]


def test_served_value_and_raised_rank__held_together__the_approved_request_applies(demo) -> None:
    # Given an edit of a served variation's value that also raises its risk rank
    v4 = variation("citation_first_v4")
    saved, change_request = submitting.variation_change_submit(variation=v4, actor=user("owner"), reason="warmer",
                                                             value=warmer_v4(), risk_rank=2)
    # Then the rank waits with the value (approvers approve what applying produces)
    assert change_request.proposed == {"variations": {"citation_first_v4": warmer_v4()},
                                       "risk_ranks": {"citation_first_v4": 2}}
    assert variation("citation_first_v4").risk_rank == 1
    # and once approved, applying gives exactly that
    for approver in ("pm", "lead")[:change_request.required_approvals]:
        approving.change_request_approve(change_request=change_request, actor=user(approver))
    applied = applying.change_request_apply(change_request=change_request, actor=user("owner"))
    assert applied.status == ChangeRequest.Status.APPLIED
    assert (variation("citation_first_v4").value, variation("citation_first_v4").risk_rank) == (warmer_v4(), 2)


@pytest.mark.parametrize("rank", [-1, "2", 1.5, True, 40000])
def test_risk_rank_not_a_whole_number_from_zero__refused_before_any_request(demo, rank) -> None:
    before = ChangeRequest.objects.count()
    with pytest.raises(ValidationError) as caught:
        submitting.variation_change_submit(variation=variation("citation_first_v4"), actor=user("owner"),
                                         reason="x", value=warmer_v4(), risk_rank=rank)
    assert "risk_rank" in caught.value.message_dict
    assert ChangeRequest.objects.count() == before and variation("citation_first_v4").risk_rank == 1
