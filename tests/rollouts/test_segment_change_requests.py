"""Segment edits in the console go through change control: a segment that decides who a
governed environment (the demo's production) serves is edited on the same page, with a reason;
a change that raises risk there opens a change request, which approvers approve and an editor
applies, while everything else saves at once; the change request page and inbox work for
requests that change a segment. (The segments page itself: tests/flags/test_segment_list.py.)

The demo segment internal_users is used by production's rules of support_agent_tool_mode
(serving approval_required) and support_assistant_profile (serving citation_first_v4);
beta_accounts by the profile flag's 5 % split in production.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.html import escape

from audit.constants import AuditAction
from flags import services as flag_services
from flags.models import Environment, Segment
from rollouts.change_control import approval_policy, approving, submitting
from rollouts.models import ChangeRequest
from tests.factories import TEST_ACTOR
from tests.flags.support import audit_mark
from tests.rollouts.support import as_user, events_since, user

pytestmark = pytest.mark.django_db

PROJECT = "support-assistant"
SEGMENTS = f"/p/{PROJECT}/segments/"
HTMX = {"HX-Request": "true"}
NEW_KEY = "acct-internal-003"


def segment(key: str) -> Segment:
    return Segment.objects.get(project__key=PROJECT, key=key)


def edit_url(key: str) -> str:
    return f"{SEGMENTS}{key}/"


def form_data(key: str, **overrides: Any) -> dict[str, Any]:
    """The edit form as the page shows it for `key`, with `overrides` typed in."""
    current = segment(key)
    data = {"name": current.name, "description": current.description,
            "included_keys": "\n".join(current.included_keys), "excluded_keys": "\n".join(current.excluded_keys),
            "rules": json.dumps(current.rules), "version": str(current.version), "reason": ""}
    data.update(overrides)
    return data


def widened_internal_users(**overrides: Any) -> dict[str, Any]:
    keys = [*segment("internal_users").included_keys, NEW_KEY]
    return form_data("internal_users", included_keys="\n".join(keys), **overrides)


def content_of(key: str) -> tuple[Any, ...]:
    current = segment(key)
    return (current.version, current.name, current.included_keys, current.excluded_keys, current.rules)


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def field_errors(page: str, field: str) -> str:
    """The error list Django renders beside `field` (empty when there is none)."""
    found = re.search(rf'<ul class="errorlist" id="id_{field}_error">(.*?)</ul>', page, re.S)
    return found.group(1) if found else ""


def open_widening_request(client: Any, reason: str = "Aisha joined the support team") -> ChangeRequest:
    response = as_user(client, "owner").post(edit_url("internal_users"), widened_internal_users(reason=reason))
    change_request = ChangeRequest.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/p/{PROJECT}/changes/{change_request.pk}/"
    return change_request


# --- the edit form ---------------------------------------------------------------------------


def test_segment_edit_page__segment_used_in_production__names_where_and_asks_for_a_reason(client, demo) -> None:
    # Given the owner, an editor
    as_user(client, "owner")
    # When they open internal_users, which production's rules use
    page = client.get(edit_url("internal_users")).content.decode()
    # Then the page says where it decides who is served, and offers a reason that looks required
    assert escape("Segment “internal_users” decides who Production serves for support_agent_tool_mode and "
                  "support_assistant_profile: a change that widens or narrows it there needs approval") in page
    assert re.search(r'<label for="id_reason">Reason <span aria-hidden="true">\*</span></label>', page)
    assert ">Submit</button>" in page and "read-only" not in page


def test_segment_edit_page__segment_used_nowhere_governed__plain_editor_with_optional_reason(client, demo) -> None:
    # Given a segment nothing governed uses
    flag_services.segment_create(project=demo, key="qa_accounts", name="QA", actor=TEST_ACTOR)
    # When the owner opens it
    page = as_user(client, "owner").get(edit_url("qa_accounts")).content.decode()
    # Then it is the plain editor: no notice, an optional reason, "Save segment"
    assert 'data-testid="segment-governed-notice"' not in page
    assert '<label for="id_reason">Reason (optional)</label>' in page and ">Save segment</button>" in page


def test_segment_edit__owner_widens_internal_users__change_request_opens_and_nothing_applied(client, demo) -> None:
    # Given the owner, and internal_users as production uses it
    before = content_of("internal_users")
    mark = audit_mark()
    # When they add an included key, with a reason, and submit
    response = as_user(client, "owner").post(edit_url("internal_users"),
                                             widened_internal_users(reason="Aisha joined the support team"),
                                             follow=True)
    # Then they land on the new change request, told what it waits for
    change_request = ChangeRequest.objects.get()
    assert response.redirect_chain == [(f"/p/{PROJECT}/changes/{change_request.pk}/", 302)]
    assert messages_of(response) == [
        f"CR-{change_request.pk} opened: waits for 1 approval. Segment “internal_users” stays as it is until the "
        "request is approved and applied; the approvers have been notified."]
    assert (change_request.kind, change_request.segment.key, change_request.flag, change_request.status,
            change_request.required_approvals) == (ChangeRequest.Kind.SEGMENT, "internal_users", None, "pending", 1)
    assert change_request.proposed["included_keys"] == [*before[2], NEW_KEY]
    # and nothing was applied: the segment is as it was, and the only audit row is the request's
    assert content_of("internal_users") == before
    events = events_since(mark)
    assert [(e.action, e.actor, e.change_request_id) for e in events] == [
        (AuditAction.CHANGE_REQUEST_CREATED, user("owner"), change_request.pk)]
    assert events[0].reason == "Aisha joined the support team"


def test_segment_edit__htmx_widening__client_redirect_to_the_change_request(client, demo) -> None:
    # Given the owner on the edit page (htmx submits the form)
    # When they submit the widening
    response = as_user(client, "owner").post(edit_url("internal_users"), widened_internal_users(reason="new hire"),
                                             headers=HTMX)
    # Then htmx is sent to the request's page
    change_request = ChangeRequest.objects.get()
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/p/{PROJECT}/changes/{change_request.pk}/"
    assert segment("internal_users").included_keys == ["acct-internal-001", "acct-internal-002"]


def test_segment_change_request__pm_approves_owner_applies__segment_changed_and_audited(client, demo) -> None:
    # Given the owner's pending request to widen internal_users
    change_request = open_widening_request(client)
    version = segment("internal_users").version
    # When pm approves it
    approving.change_request_approve(change_request=change_request, actor=user("pm"), comment="Welcome, Aisha")
    mark = audit_mark()
    # and the owner applies it from its page (htmx)
    response = as_user(client, "owner").post(f"/p/{PROJECT}/changes/{change_request.pk}/apply/", headers=HTMX)
    # Then the request is applied, and the segment carries the new key one version up
    assert response.status_code == 200 and "Applied: the change is live." in response.content.decode()
    change_request.refresh_from_db()
    assert change_request.status == ChangeRequest.Status.APPLIED
    applied = segment("internal_users")
    assert applied.included_keys == ["acct-internal-001", "acct-internal-002", NEW_KEY]
    assert applied.version == version + 1
    # and the segment's audit row names the request it came from
    events = events_since(mark)
    assert [(e.action, e.actor, e.change_request_id) for e in events] == [
        (AuditAction.SEGMENT_UPDATED, user("owner"), change_request.pk),
        (AuditAction.CHANGE_REQUEST_APPLIED, user("owner"), change_request.pk)]
    assert events[0].before == {"included_keys": ["acct-internal-001", "acct-internal-002"]}
    assert events[0].after == {"included_keys": ["acct-internal-001", "acct-internal-002", NEW_KEY]}


@pytest.mark.parametrize(("key", "overrides"), [
    ("beta_accounts", {"included_keys": "acct-beta-101\nacct-beta-102"}),  # one beta account fewer
    ("beta_accounts", {"excluded_keys": "acct-beta-999\nacct-beta-998"}),  # one more excluded
    ("internal_users", {"name": "Internal support team"}),  # words only: nobody served differently
], ids=["narrower-included", "more-excluded", "renamed"])
def test_segment_edit__change_raising_no_risk__saves_at_once_without_a_reason(client, demo, key, overrides) -> None:
    # Given the owner, and a segment production uses
    version = segment(key).version
    mark = audit_mark()
    # When they make a change that serves nobody anything riskier, giving no reason
    response = as_user(client, "owner").post(edit_url(key), form_data(key, **overrides), follow=True)
    # Then it is saved at once and they are back on the list
    assert response.redirect_chain == [(SEGMENTS, 302)]
    assert messages_of(response) == [f"Segment “{key}” saved."]
    assert not ChangeRequest.objects.exists()
    assert segment(key).version == version + 1
    events = events_since(mark)
    assert [(e.action, e.actor, e.change_request_id) for e in events] == [
        (AuditAction.SEGMENT_UPDATED, user("owner"), None)]


def test_segment_edit__segment_used_nowhere_governed__saves_at_once_with_its_reason(client, demo) -> None:
    # Given a segment used by development only
    flag_services.segment_create(project=demo, key="qa_accounts", name="QA", included_keys=["acct-qa-1"],
                                 actor=TEST_ACTOR)
    mark = audit_mark()
    # When the owner widens it, with a reason
    response = as_user(client, "owner").post(edit_url("qa_accounts"), form_data(
        "qa_accounts", included_keys="acct-qa-1\nacct-qa-2", reason="Second QA account"))
    # Then it saves at once, as before change control, and the reason is in its audit row
    assert response.status_code == 302 and response["Location"] == SEGMENTS
    assert segment("qa_accounts").included_keys == ["acct-qa-1", "acct-qa-2"]
    events = events_since(mark)
    assert [(e.action, e.reason) for e in events] == [(AuditAction.SEGMENT_UPDATED, "Second QA account")]


@pytest.mark.parametrize("headers", [HTMX, {}], ids=["htmx", "plain-post"])
def test_segment_edit__risky_change_blank_reason__422_error_beside_reason_nothing_written(
    client, demo, headers,
) -> None:
    # Given the owner, and internal_users as production uses it
    before = content_of("internal_users")
    mark = audit_mark()
    # When they widen it without saying why
    response = as_user(client, "owner").post(edit_url("internal_users"), widened_internal_users(reason=""),
                                             headers=headers)
    # Then the form comes back (the fragment for htmx, the page otherwise) with the error beside the reason
    page = response.content.decode()
    assert response.status_code == 422
    assert ("<html" in page) is not bool(headers)
    assert "Say why" in field_errors(page, "reason")
    assert NEW_KEY in page  # what they typed is kept
    # and nothing was written
    assert not ChangeRequest.objects.exists()
    assert content_of("internal_users") == before
    assert events_since(mark) == []


@pytest.mark.parametrize(("overrides", "field", "error"), [
    ({"rules": '[{"clauses": '}, "rules", "Not valid JSON"),
    ({"rules": json.dumps([{"clauses": [{"op": "in_segment", "values": ["no_such_segment"]}]}])}, "rules",
     "Unknown segment(s): no_such_segment"),
    ({"version": "0"}, None, "Someone changed this segment since you opened it"),
], ids=["malformed-json", "unknown-segment-in-rules", "stale-version"])
def test_segment_edit__bad_input__error_shown_nothing_written(client, demo, overrides, field, error) -> None:
    # Given the owner, and internal_users as production uses it
    before = content_of("internal_users")
    mark = audit_mark()
    # When they submit a widening that is malformed, names an unknown segment, or was opened at an old version
    response = as_user(client, "owner").post(edit_url("internal_users"),
                                             widened_internal_users(reason="new hire", **overrides), headers=HTMX)
    # Then the error is shown beside the field (at the top of the form for a stale version)
    page = response.content.decode()
    assert response.status_code == 422
    if field:
        assert escape(error) in field_errors(page, field)
    else:
        assert re.search(rf'<div class="form-errors" role="alert"><div>{re.escape(error)}', page)
    # and nothing was written
    assert not ChangeRequest.objects.exists()
    assert content_of("internal_users") == before
    assert events_since(mark) == []


def test_segment_edit__unknown_segment__404(client, demo) -> None:
    response = as_user(client, "owner").post(edit_url("no_such_segment"), {"name": "x", "version": "1"})
    assert response.status_code == 404
    assert not ChangeRequest.objects.exists()


@pytest.mark.parametrize("who", ["viewer", "auditor", "pm", "operator"])
def test_segment_edit__not_an_editor__403_nothing_written(client, demo, viewer, who) -> None:
    # Given someone without the editor role
    person = viewer if who == "viewer" else user(who)
    before = content_of("internal_users")
    mark = audit_mark()
    # When they open the editor, post the widening, or post it as htmx
    page = as_user(client, person).get(edit_url("internal_users"))
    post = client.post(edit_url("internal_users"), widened_internal_users(reason="let me in"))
    fragment = client.post(edit_url("internal_users"), widened_internal_users(reason="let me in"), headers=HTMX)
    # Then each is refused with 403 (htmx: a fragment for the message area), and nothing is written
    assert (page.status_code, post.status_code, fragment.status_code) == (403, 403, 403)
    assert fragment["HX-Retarget"] == "#messages"
    assert not ChangeRequest.objects.exists()
    assert content_of("internal_users") == before
    assert events_since(mark) == []


# --- the change request page and the inbox ---------------------------------------------------


def test_change_request_page__segment_request__names_the_segment_and_links_to_segments(client, demo) -> None:
    # Given the owner's pending request to widen internal_users
    change_request = open_widening_request(client)
    # When pm opens it
    page = as_user(client, "pm").get(f"/p/{PROJECT}/changes/{change_request.pk}/").content.decode()
    # Then it is titled by the segment, its crumbs lead to the segments page, and pm may approve it
    assert f"<title>CR-{change_request.pk} · segment internal_users · FeatureOps</title>" in page
    assert (f"<h1>CR-{change_request.pk}: segment <code>internal_users</code> in every governed environment "
            "using it</h1>") in page
    assert f'<a href="{SEGMENTS}">Segments</a>' in page
    assert f'<a href="{SEGMENTS}#segment-internal_users">internal_users</a>' in page
    assert f"segment internal_users: 1 key(s) included: {NEW_KEY}" in page
    assert "support_agent_tool_mode in Production: segment internal_users can now bring more people" in page
    assert ">Approve</button>" in page
    assert 'data-testid="cr-shortfall"' not in page  # pm and lead can approve it


def test_change_request_page__cannot_reach_its_approvals__warns_with_the_shortfall(client, demo) -> None:
    # Given production's policy asks 3 approvals of any risky change, and only pm and lead approve
    production = Environment.objects.get(project=demo, key="production")
    approval_policy.approval_policy_update(environment=production, actor=user("admin"), approvals_for_escalation=3,
                                    approvals_otherwise=3)
    # When the owner widens internal_users
    change_request = open_widening_request(client)
    # Then its page warns that it can never be approved as things stand
    page = client.get(f"/p/{PROJECT}/changes/{change_request.pk}/").content.decode()
    warning = re.search(r'<p class="notice" role="alert" data-testid="cr-shortfall">(.*?)</p>', page, re.S)
    assert warning is not None
    assert warning.group(1) == escape(approving.approval_shortfall(change_request))
    assert "It needs 3 approvals, but only 2 people hold the approver role" in warning.group(1)


def test_change_request_page__segment_request_htmx_approve__swaps_the_body(client, demo) -> None:
    # Given the owner's pending request
    change_request = open_widening_request(client)
    mark = audit_mark()
    # When pm approves it from the page
    response = as_user(client, "pm").post(f"/p/{PROJECT}/changes/{change_request.pk}/approve/",
                                          {"comment": "ok"}, headers=HTMX)
    # Then the body is swapped with the approval counted, and the approval is audited
    body = response.content.decode()
    assert response.status_code == 200 and '<strong>1 of 1</strong>' in body
    assert "Approved: 1 of 1 approvals." in body
    assert [(e.action, e.actor) for e in events_since(mark)] == [(AuditAction.CHANGE_REQUEST_APPROVED, user("pm"))]


def test_change_request_page__segment_moved_before_apply__conflicted_showing_what_moved(client, demo) -> None:
    # Given the owner's approved request to widen internal_users
    change_request = open_widening_request(client)
    approving.change_request_approve(change_request=change_request, actor=user("pm"))
    # and someone renaming the segment meanwhile (which raises no risk, so it saved at once)
    submitting.segment_change_submit(segment=segment("internal_users"), changes={"name": "Support staff"},
                                   actor=user("lead"))
    mark = audit_mark()
    # When the owner applies the request
    response = as_user(client, "owner").post(f"/p/{PROJECT}/changes/{change_request.pk}/apply/", headers=HTMX)
    # Then nothing is applied: the request is conflicted, and its page shows what moved in between
    body = response.content.decode()
    assert response.status_code == 422
    assert "Conflict: the segment moved from version 1 to 2" in body
    assert "segment internal_users" in body and "Support staff" in body
    assert NEW_KEY not in segment("internal_users").included_keys
    change_request.refresh_from_db()
    assert change_request.status == ChangeRequest.Status.CONFLICTED
    assert [(e.action, e.actor) for e in events_since(mark)] == [
        (AuditAction.CHANGE_REQUEST_CONFLICTED, user("owner"))]


def test_inbox__segment_request__listed_with_a_link_to_the_segments_page(client, demo) -> None:
    # Given the owner's pending request
    change_request = open_widening_request(client)
    # When pm opens the inbox
    page = as_user(client, "pm").get("/changes/").content.decode()
    # Then the request waits there, named by its segment
    assert f'href="/p/{PROJECT}/changes/{change_request.pk}/">CR-{change_request.pk}</a>' in page
    assert (f'<a href="{SEGMENTS}#segment-internal_users">segment <code>internal_users</code></a> · '
            "every governed environment using it") in page


def test_inbox__segment_requests__queries_do_not_grow_with_requests(client, demo) -> None:
    # Given one segment request, then four more
    open_widening_request(client)
    as_user(client, "pm")
    with CaptureQueriesContext(connection) as few:
        assert client.get("/changes/").status_code == 200
    for n in range(4):
        submitting.segment_change_submit(segment=segment("beta_accounts"), actor=user("owner"), reason=f"more {n}",
                                       changes={"included_keys": [*segment("beta_accounts").included_keys, f"b-{n}"]})
    assert ChangeRequest.objects.count() == 5
    with CaptureQueriesContext(connection) as many:
        assert client.get("/changes/").status_code == 200
    assert len(many.captured_queries) == len(few.captured_queries)
