"""No path changes what production serves without the approvals its policy requires.

The five attacks of issue 13, each walked on the demo project with the demo's people, and the
same attack through the other write paths. Each test fails on the code before the served-state
guard: there, every one of them ended with production serving something nobody approved."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import close_old_connections, connection, transaction

from audit.models import AuditEvent
from flags import services as flag_services
from flags.evaluation.engine import compile_snapshot, evaluate
from flags.models import Environment, Flag, Segment, Targeting, Variation
from flags.served_state.guard import GovernanceError, served_states
from flags.snapshot_builder import build_environment_snapshot
from rollouts.change_control import applying, approving, incident_mode, kill_switch, submitting, wording
from rollouts.models import ChangeRequest, Incident
from tests.factories import set_up_targeting
from tests.rollouts.support import TOOL_MODE, production, user

pytestmark = pytest.mark.postgres

PROFILE = "support_assistant_profile"
INCIDENT_FALLBACK = "support_ai_incident_fallback"
EVERYONE = [{"clauses": [{"attribute": "accountId", "op": "matches", "values": [".*"]}]}]


def served(flag_key: str, account: str, **attributes: Any) -> Any:
    """What production serves this account now, from a snapshot built like the OFREP servers'."""
    environment = Environment.objects.get(project__key="support-assistant", key="production")
    snapshot = compile_snapshot(build_environment_snapshot(environment.pk))
    return evaluate(snapshot, flag_key, {"targetingKey": account, "accountId": account, **attributes}).value


def production_hashes() -> dict[str, str]:
    project_id = Flag.objects.get(key=TOOL_MODE).project_id
    return {key: state.hash for key, state in served_states(project_id=project_id).items()}


def approve(change_request: ChangeRequest, *approvers: str) -> ChangeRequest:
    for name in approvers:
        change_request = approving.change_request_approve(change_request=change_request, actor=user(name))
    return change_request


# --- 1. incident lift after ungoverned edits ------------------------------------------------


def test_incident_lift__segment_widened_and_value_changed_while_off__flags_stay_off(demo) -> None:
    # Given incident mode sent production to its fallbacks
    incident = incident_mode.incident_start(environment=production().environment, surfaces=[], reason="Bad answers",
                                       actor=user("operator"))
    # and, while the flags were off, the owner widened internal_users to everyone and made
    # approval_required serve "write" (neither is served while off, so neither needed approval)
    submitting.segment_change_submit(segment=Segment.objects.get(key="internal_users"), actor=user("owner"),
                                   changes={"rules": EVERYONE}, reason="tidy")
    variation = Variation.objects.get(flag__key=TOOL_MODE, key="approval_required")
    submitting.variation_change_submit(variation=variation, actor=user("owner"), value="write", reason="tidy")
    assert Segment.objects.get(key="internal_users").rules == EVERYONE  # (the edits did land)
    # When the operator lifts incident mode
    lifted = incident_mode.incident_lift(incident=incident, reason="Recovered", actor=user("operator"))
    # Then neither flag that reaches the edits comes back on: what they would serve is not what was serving
    assert set(lifted.left) == {TOOL_MODE, PROFILE}
    assert not production(TOOL_MODE).enabled and not production(PROFILE).enabled
    assert served(TOOL_MODE, "acct-anyone") == "read_only"
    assert AuditEvent.objects.get(action="incident.lifted").after["left"] == lifted.left


def test_incident_lift__nothing_changed__restores_exactly_what_was_serving(demo) -> None:
    # Given incident mode, and an edit that touches only the tool-mode flag's unserved-while-off value
    before = production_hashes()
    incident = incident_mode.incident_start(environment=production().environment, surfaces=[], reason="Bad answers",
                                       actor=user("operator"))
    variation = Variation.objects.get(flag__key=TOOL_MODE, key="approval_required")
    submitting.variation_change_submit(variation=variation, actor=user("owner"), value="write", reason="tidy")
    # When the incident is lifted
    lifted = incident_mode.incident_lift(incident=Incident.objects.get(pk=incident.pk), reason="ok", actor=user("operator"))
    # Then the profile flag serves again exactly as before; the tool-mode flag stays off
    assert lifted.restored == [PROFILE] and lifted.left == [TOOL_MODE]
    after = production_hashes()
    profile_key = next(k for k in before if k.startswith(f"{Flag.objects.get(key=PROFILE).pk}:"))
    assert after[profile_key] == before[profile_key]


# --- 2. a fallback request binds the fallback's value ---------------------------------------


def test_fallback_request__fallback_value_edited_after_approval__conflicted_nothing_served(demo) -> None:
    flag = Flag.objects.get(key=INCIDENT_FALLBACK)
    # Given an approved flag-wide request changing the fallback to cached_answer
    _, change_request = submitting.contract_change_submit(flag=flag, actor=user("owner"),
                                                        fallback_variation_key="cached_answer",
                                                        reason="Cache while the model is down")
    assert change_request is not None
    # (cached_answer is riskier than anything production serves: an escalation, two approvals)
    assert change_request.escalation and change_request.required_approvals == 2
    approve(change_request, "pm", "lead")
    # and the owner then edited cached_answer's value (not served yet: it applies at once)
    cached = Variation.objects.get(flag=flag, key="cached_answer")
    submitting.variation_change_submit(variation=cached, actor=user("owner"), value="unreviewed_answer", reason="x")
    assert Variation.objects.get(pk=cached.pk).value == "unreviewed_answer"
    # When the owner applies the request
    result = applying.change_request_apply(change_request=change_request, actor=user("owner"))
    # Then it is conflicted, production still falls back to baseline_model, and the page says what moved
    assert result.status == ChangeRequest.Status.CONFLICTED
    assert Flag.objects.get(pk=flag.pk).fallback_variation.key == "baseline_model"
    assert served(INCIDENT_FALLBACK, "acct-1") == "baseline_model"
    moved = [line.text for line in wording.describe_conflict(result)]
    assert any("variations.cached_answer.value" in text and "unreviewed_answer" in text for text in moved)


def test_fallback_request__untouched__applies_the_approved_value(demo) -> None:
    flag = Flag.objects.get(key=INCIDENT_FALLBACK)
    _, change_request = submitting.contract_change_submit(flag=flag, actor=user("owner"),
                                                        fallback_variation_key="cached_answer", reason="Cache")
    approve(change_request, "pm", "lead")
    result = applying.change_request_apply(change_request=change_request, actor=user("owner"))
    assert result.status == ChangeRequest.Status.APPLIED
    assert served(INCIDENT_FALLBACK, "acct-1") == "cached_answer"


# --- 3. a segment widened between approval and apply -----------------------------------------


def _pilot_write_request() -> ChangeRequest:
    flag_services.segment_create(project=production().flag.project, key="pilot_accounts", name="Pilot accounts",
                                 included_keys=["acct-pilot-1"], actor=user("owner"))
    targeting = production()
    rule = {"id": "pilot", "clauses": [{"op": "in_segment", "values": ["pilot_accounts"]}],
            "serve": {"variation": "write"}}
    change_request = submitting.targeting_change_submit(targeting=targeting, changes={"rules": [*targeting.rules, rule]},
                                                      reason="Pilot write tools", actor=user("owner"))
    return approve(change_request, "pm", "lead")


def test_segment_widened_after_approval__apply_conflicted__nobody_new_gets_write(demo) -> None:
    # Given an approved rule "pilot_accounts → write"
    change_request = _pilot_write_request()
    assert change_request.status == ChangeRequest.Status.APPROVED
    # and pilot_accounts widened to everyone (not yet used by production, so it saved at once)
    result = submitting.segment_change_submit(segment=Segment.objects.get(key="pilot_accounts"), actor=user("owner"),
                                            changes={"rules": EVERYONE}, reason="more pilots")
    assert isinstance(result, Segment)
    # When the owner applies the request
    applied = applying.change_request_apply(change_request=change_request, actor=user("owner"))
    # Then it is conflicted and nobody gets write
    assert applied.status == ChangeRequest.Status.CONFLICTED
    assert served(TOOL_MODE, "acct-anyone") == "read_only"
    assert served(TOOL_MODE, "acct-pilot-1") == "read_only"
    assert any("segments.pilot_accounts.rules" in line.text for line in wording.describe_conflict(applied))


def test_segment_used_in_production__widening__waits_for_approval(demo) -> None:
    # Given the approved pilot rule was applied as approved
    change_request = _pilot_write_request()
    assert applying.change_request_apply(change_request=change_request, actor=user("owner")).status == "applied"
    assert served(TOOL_MODE, "acct-pilot-1") == "write"
    # When the owner widens the segment now that production uses it
    result = submitting.segment_change_submit(segment=Segment.objects.get(key="pilot_accounts"), actor=user("owner"),
                                            changes={"rules": EVERYONE}, reason="more pilots")
    # Then it is a change request, and nobody new gets write meanwhile
    assert isinstance(result, ChangeRequest) and result.kind == ChangeRequest.Kind.SEGMENT
    assert [r["code"] for r in result.reasons] == ["segment_widened"]
    assert served(TOOL_MODE, "acct-anyone") == "read_only"
    # and the plain service refuses it outright
    with pytest.raises(GovernanceError):
        flag_services.segment_update(segment=Segment.objects.get(key="pilot_accounts"), actor=user("owner"),
                                     rules=EVERYONE)


# --- 4. removing individual targets ---------------------------------------------------------


def test_removing_an_opt_out_target__raises_risk__operator_refused_owner_needs_approval(demo) -> None:
    # Given production serves none to acct-optout-1 (an opt-out) and read_only to everyone else
    set_up_targeting(production(), targets=[{"variation": "none", "values": ["acct-optout-1"]}])
    assert served(TOOL_MODE, "acct-optout-1") == "none"
    # When the operator clears the targets, as if rolling back
    with pytest.raises(ValidationError, match="individual target"):
        submitting.targeting_change_submit(targeting=production(), changes={"targets": []}, reason="roll back",
                                         actor=user("operator"))
    # Then nothing changed; and the owner's same change waits for approval
    result = submitting.targeting_change_submit(targeting=production(), changes={"targets": []}, reason="clean up",
                                              actor=user("owner"))
    assert isinstance(result, ChangeRequest)
    assert "targets_removed" in [r["code"] for r in result.reasons]
    assert served(TOOL_MODE, "acct-optout-1") == "none"


# --- 5. a variation edit racing an apply -----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_value_edit_racing_apply__never_serves_an_unapproved_value() -> None:
    from flags.demo import seed_demo

    seed_demo()
    # Given an approved rule "beta_accounts → write" (write is not served yet)
    targeting = production()
    rule = {"id": "beta", "clauses": [{"op": "in_segment", "values": ["beta_accounts"]}],
            "serve": {"variation": "write"}}
    change_request = approve(submitting.targeting_change_submit(
        targeting=targeting, changes={"rules": [*targeting.rules, rule]}, reason="beta writes",
        actor=user("owner")), "pm", "lead")
    applied_inside = threading.Event()
    edit_done = threading.Event()
    outcome: dict[str, Any] = {}

    def edit_value() -> None:  # a second connection edits write's value while the apply is open
        try:
            applied_inside.wait(10)
            submitting.variation_change_submit(variation=Variation.objects.get(flag__key=TOOL_MODE, key="write"),
                                             actor=user("owner"), value="admin", reason="sneak")
            outcome["edit"] = "saved"
        except ValidationError as exc:
            outcome["edit"] = exc
        finally:
            edit_done.set()
            close_old_connections()
            connection.close()

    editor = threading.Thread(target=edit_value)
    editor.start()
    # When the apply has written the rule but not yet committed, the edit starts on its own connection
    with transaction.atomic():
        result = applying.change_request_apply(change_request=change_request, actor=user("owner"))
        applied_inside.set()
        # the edit must wait for the apply's locks instead of committing under it
        assert not edit_done.wait(1.0)
    editor.join(20)
    # Then the apply went through, and the edit, once it ran, saw write served and did not apply
    assert result.status == ChangeRequest.Status.APPLIED
    assert Variation.objects.get(flag__key=TOOL_MODE, key="write").value == "write"
    assert served(TOOL_MODE, "acct-beta-101") == "write"
    edit = outcome["edit"]
    assert isinstance(edit, ValidationError) or edit == "saved"
    if edit == "saved":  # it became a change request instead of an edit
        assert ChangeRequest.objects.filter(kind="flag", status="pending", flag__key=TOOL_MODE).exists()


# --- the same attack through other write paths ---------------------------------------------


def test_catalog_services_directly__risky_production_changes__refused_and_nothing_written(demo) -> None:
    owner = user("owner")
    hashes, rows = production_hashes(), AuditEvent.objects.count()
    attempts = [
        lambda: flag_services.targeting_update(targeting=production(), actor=owner,
                                               default_serve={"variation": "write"}),
        lambda: flag_services.variation_update(variation=Variation.objects.get(flag__key=TOOL_MODE, key="read_only"),
                                               actor=owner, value="write"),
        lambda: flag_services.variation_update(
            variation=Variation.objects.get(flag__key=TOOL_MODE, key="approval_required"), actor=owner, risk_rank=0),
        lambda: flag_services.flag_update(flag=Flag.objects.get(key=TOOL_MODE), actor=owner,
                                          fallback_variation_key="write"),
        lambda: flag_services.segment_update(segment=Segment.objects.get(key="internal_users"), actor=owner,
                                             rules=EVERYONE),
        lambda: flag_services.segment_update(segment=Segment.objects.get(key="beta_accounts"), actor=owner,
                                             included_keys=["acct-beta-101", "acct-new"]),
    ]
    for attempt in attempts:
        with pytest.raises(GovernanceError):
            with transaction.atomic():
                attempt()
    assert production_hashes() == hashes
    assert AuditEvent.objects.count() == rows


def test_lowering_risk_directly__applies_at_once(demo) -> None:
    # Narrowing internal_users (its people fall through to read_only, less than approval_required)
    flag_services.segment_update(segment=Segment.objects.get(key="internal_users"), actor=user("owner"),
                                 included_keys=["acct-internal-001"])
    assert Segment.objects.get(key="internal_users").included_keys == ["acct-internal-001"]
    # Turning a flag off
    flag_services.targeting_update(targeting=production(), actor=user("owner"), enabled=False)
    assert served(TOOL_MODE, "acct-internal-001") == "read_only"


def test_scheduled_apply__segment_widened_before_due__conflicted(demo) -> None:
    import datetime

    from django.utils import timezone

    change_request = _pilot_write_request()
    applying.change_request_schedule(change_request=change_request, actor=user("owner"),
                                     when=timezone.now() + datetime.timedelta(minutes=5))
    submitting.segment_change_submit(segment=Segment.objects.get(key="pilot_accounts"), actor=user("owner"),
                                   changes={"included_keys": ["acct-pilot-1", "acct-extra"]}, reason="more")
    ChangeRequest.objects.filter(pk=change_request.pk).update(scheduled_for=timezone.now())
    applying.apply_due_change_requests()
    assert ChangeRequest.objects.get(pk=change_request.pk).status == ChangeRequest.Status.CONFLICTED
    assert served(TOOL_MODE, "acct-extra") == "read_only"


def test_flags_as_code_import__served_value_change__becomes_a_request(demo) -> None:
    from rollouts.flags_as_code.document import export_contracts
    from rollouts.flags_as_code.importing import import_contracts

    project = production().flag.project
    text = export_contracts(project=project, flag_keys=[TOOL_MODE])
    assert "value: approval_required" in text
    text = text.replace("value: approval_required", "value: write_everything")
    report = import_contracts(project=project, text=text, actor=user("owner"), reason="sync")
    assert Variation.objects.get(flag__key=TOOL_MODE, key="approval_required").value == "approval_required"
    assert ChangeRequest.objects.filter(flag__key=TOOL_MODE, kind="flag", status="pending").exists(), report


def test_admin__catalog_rows__cannot_be_changed(client, demo) -> None:
    admin_user = user("admin")
    client.force_login(admin_user)
    targeting = production()
    response = client.post(f"/admin/flags/targeting/{targeting.pk}/change/", {"enabled": "on", "version": 9})
    assert response.status_code == 403
    assert Targeting.objects.get(pk=targeting.pk).version == targeting.version


def test_approvals__stop_counting_at_the_requirement(demo) -> None:
    # Given a request that needs one approval, approved by pm
    change_request = submitting.targeting_change_submit(
        targeting=production(), changes={"default_serve": {"variation": "approval_required"}}, reason="widen",
        actor=user("owner"))
    assert change_request.required_approvals == 1
    approve(change_request, "pm")
    # When lead approves too
    with pytest.raises(ValidationError, match="already has the approvals it needs"):
        approve(change_request, "lead")
    # Then it counts 1 of 1, never "2 of 1"
    assert approving.valid_approvals(change_request) == 1


def test_unsatisfiable_request__says_so_and_tells_the_admins(demo) -> None:
    from notifications.models import Notification

    # lead is one of only two approvers: their own escalation can get one approval at most
    targeting = production()
    change_request = submitting.targeting_change_submit(
        targeting=targeting, changes={"rules": [*targeting.rules, {"id": "b", "clauses": EVERYONE[0]["clauses"],
                                                                    "serve": {"variation": "write"}}]},
        reason="everyone writes", actor=user("lead"))
    assert change_request.required_approvals == 2
    shortfall = approving.approval_shortfall(change_request)
    assert "only 1 person holds the approver role" in shortfall
    assert Notification.objects.filter(recipient=user("admin"), kind="change_request.stuck").exists()


def test_scheduled_request__approvals_lapse__leaves_scheduled_and_tells_the_requester(demo) -> None:
    import datetime

    from django.utils import timezone

    from notifications.models import Notification

    targeting = production()
    change_request = submitting.targeting_change_submit(
        targeting=targeting, changes={"default_serve": {"variation": "approval_required"}}, reason="widen",
        actor=user("owner"))
    approve(change_request, "pm")
    applying.change_request_schedule(change_request=change_request, actor=user("owner"),
                                     when=timezone.now() + datetime.timedelta(hours=1))
    flag_services.membership_revoke(project=targeting.flag.project, user=user("pm"), role="approver",
                                    actor=user("admin"))
    applying.apply_due_change_requests()
    change_request.refresh_from_db()
    assert change_request.status == ChangeRequest.Status.PENDING and change_request.scheduled_for is None
    assert AuditEvent.objects.filter(action="change_request.unscheduled", change_request_id=change_request.pk).exists()
    assert Notification.objects.filter(recipient=user("owner"), title__startswith="No longer scheduled").exists()


def test_import_contracts_command__served_value_change__waits_in_a_request(demo, tmp_path) -> None:
    from django.core.management import call_command

    from rollouts.flags_as_code import export_contracts

    project = production().flag.project
    contract = tmp_path / "tool_mode.yaml"
    contract.write_text(export_contracts(project=project, flag_keys=[TOOL_MODE])
                        .replace("value: approval_required", "value: write_everything"))
    call_command("import_contracts", str(contract), "--project", project.key, "--actor", "owner",
                 "--reason", "sync from the repository", stdout=io.StringIO(), stderr=io.StringIO())
    assert Variation.objects.get(flag__key=TOOL_MODE, key="approval_required").value == "approval_required"
    waiting = ChangeRequest.objects.get(flag__key=TOOL_MODE, kind="flag", status="pending")
    assert waiting.proposed == {"variations": {"approval_required": "write_everything"}}
    assert served(TOOL_MODE, "acct-internal-001") == "approval_required"


def test_rollout_step_approved__kill_switch_before_apply__not_applied_and_stays_off(demo) -> None:
    from rollouts.plans import design, transitions

    # Given a production rollout whose first stage (internal users get write) was approved
    plan = design.plan_from_template(flag=Flag.objects.get(key=TOOL_MODE), environment=production().environment,
                                    candidate="write", actor=user("owner"), reason="write tools")
    plan = transitions.plan_start(plan=plan, reason="go", actor=user("owner"))
    change_request = approve(ChangeRequest.objects.get(pk=plan.pending_change_request_id), "pm", "lead")
    # When the operator flips the kill switch before the owner applies it
    kill_switch.killswitch_flip(targeting=production(), reason="tool errors", actor=user("operator"))
    # Then the paused plan's request is closed, and applying it is refused
    with pytest.raises(ValidationError, match="cancelled"):
        applying.change_request_apply(change_request=change_request, actor=user("owner"))
    assert not production().enabled
    assert served(TOOL_MODE, "acct-internal-001") == "read_only"
