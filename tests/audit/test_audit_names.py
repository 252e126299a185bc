"""The audit trail as people read it: targets by today's names with links (change requests,
rollout plans, incidents), never the ids their rows recorded ("CR-2 2@3"); no empty diff rows;
a comment's words in its row; and a page whose query count does not grow with its rows."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.constants import AuditAction
from audit.diff import readable_diff
from audit.models import AuditEvent
from flags import services
from flags.constants import Role
from flags.models import Environment, Flag
from rollouts.change_control import applying, approving, incident_mode, submitting
from rollouts.models import ChangeRequest, Incident, RolloutPlan
from rollouts.plans import design, transitions
from tests.factories import TEST_ACTOR, grant, make_project, make_string_flag
from tests.rollouts.support import escalate, user

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
TOOL_MODE = "support_agent_tool_mode"
PROFILE = "support_assistant_profile"
# A recorded label in the "<flag>@<environment id>" form of the models' __str__ ("CR-2 tool_mode@3")
ID_PAIR = re.compile(r"\w@\d+\b")


def _target_cells(page_html: str) -> list[str]:
    return re.findall(r'<td class="small" data-testid="audit-target">(.*?)</td>', page_html, flags=re.S)


def _link(url: str, label: str) -> str:
    return f'<a href="{html.escape(url)}">{html.escape(label)}</a>'


def _rows_about(target: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(target_type=target._meta.label_lower, target_id=str(target.pk)))


def _production(project: Any) -> Environment:
    return Environment.objects.get(project=project, key="production")


@pytest.fixture
def trail(demo: Any) -> dict[str, Any]:
    """Given a change request (with a comment), a rollout plan and an incident in the demo project."""
    change_request = escalate("owner")
    approving.change_request_comment(change_request=change_request, body="Beta accounts asked for this\nin tickets",
                                     actor=user("pm"))
    flag = Flag.objects.get(project=demo, key=PROFILE)
    staging = Environment.objects.get(project=demo, key="staging")
    plan = design.plan_from_template(flag=flag, environment=staging, candidate="citation_first_v4",
                                     actor=user("owner"), reason="Citation-first v4 is ready")
    incident = incident_mode.incident_start(environment=_production(demo), surfaces=[],
                                            reason="Refusals spiking", actor=user("operator"))
    return {"project": demo, "change_request": change_request, "plan": plan, "incident": incident}


def test_trail__change_request_plan_and_incident_rows__named_and_linked__no_id_labels(client, trail) -> None:
    project, change_request, plan, incident = (trail[k] for k in ("project", "change_request", "plan", "incident"))
    # (what their rows recorded at write time: ids, not names)
    recorded = [e.target_label for t in (change_request, plan, incident) for e in _rows_about(t)]
    assert recorded and all(ID_PAIR.search(label) or label == f"incident {incident.pk} in {incident.environment_id}"
                            for label in recorded)
    client.force_login(user("auditor"))

    # When the auditor reads the project's trail
    response = client.get(f"/audit/?project={project.pk}")
    page = response.content.decode()
    cells = _target_cells(page)

    # Then each target is named and linked to its page
    assert response.status_code == 200 and len(cells) == len(response.context["page"].events)
    cr_link = _link(reverse("rollouts:change_request", kwargs={"project_key": project.key, "pk": change_request.pk}),
                    f"CR-{change_request.pk}: {TOOL_MODE} in Production")
    plan_link = _link(reverse("rollouts:plan_detail", kwargs={"project_key": project.key, "pk": plan.pk}),
                      f"rollout plan of {PROFILE} in Staging")
    started = timezone.localtime(Incident.objects.get(pk=incident.pk).started_at).strftime("%-d %b %H:%M")
    incident_link = _link(reverse("rollouts:incidents", kwargs={"project_key": project.key}),
                          f"incident mode in Production (started {started})")
    for target, link in ((change_request, cr_link), (plan, plan_link), (incident, incident_link)):
        rows = _rows_about(target)
        assert sum(link in cell for cell in cells) == len(rows) > 0, link
    # and the flags the incident turned off by their keys, linked to their pages
    flag = Flag.objects.get(project=project, key=PROFILE)
    assert _link(reverse("flags:flag_detail", kwargs={"project_key": project.key, "flag_key": PROFILE}),
                 flag.key) in page
    # And no row shows a recorded id label
    assert not any(ID_PAIR.search(html.unescape(cell)) for cell in cells)
    assert f"CR-{change_request.pk} " not in page and f"plan {plan.pk}:" not in page
    assert f"incident {incident.pk} in" not in page


def test_flag_history__change_request_rows__named_and_linked(client, trail) -> None:
    project, change_request = trail["project"], trail["change_request"]
    client.force_login(user("owner"))
    page = client.get(f"/p/{project.key}/flags/{TOOL_MODE}/history/").content.decode()
    url = reverse("rollouts:change_request", kwargs={"project_key": project.key, "pk": change_request.pk})
    assert page.count(_link(url, f"CR-{change_request.pk}: {TOOL_MODE} in Production")) == len(
        _rows_about(change_request))
    assert not ID_PAIR.search(page)


def test_trail__target_deleted__row_keeps_its_recorded_label_without_link(client, demo) -> None:
    # Given a segment created, then deleted
    segment = services.segment_create(project=demo, key="pilot_accounts", name="Pilot accounts", actor=user("owner"))
    services.segment_delete(segment=segment, actor=user("owner"))
    rows = list(AuditEvent.objects.filter(target_type="flags.segment", target_id=str(segment.pk)))
    assert {e.action for e in rows} == {AuditAction.SEGMENT_CREATED, AuditAction.SEGMENT_DELETED}
    # and another segment that still exists
    kept = services.segment_create(project=demo, key="kept_accounts", name="Kept accounts", actor=user("owner"))
    client.force_login(user("auditor"))

    cells = _target_cells(client.get(f"/audit/?project={demo.pk}").content.decode())

    # Then the gone segment's rows show what they recorded, unlinked; the kept one is named and linked
    gone = [c for c in cells if "pilot_accounts" in c]
    assert len(gone) == len(rows) and all(c.startswith(rows[0].target_label) and "<a " not in c.split("<span")[0]
                                          for c in gone)
    url = reverse("flags:segment_list", kwargs={"project_key": demo.key}) + "#segment-kept_accounts"
    assert sum(_link(url, "segment kept_accounts (Kept accounts)") in c for c in cells) == 1
    assert kept.pk


def test_trail__comment_row__shows_the_comment_text(client, trail) -> None:
    change_request = trail["change_request"]
    body = "Beta accounts asked for this\nin tickets"
    event = AuditEvent.objects.get(action=AuditAction.CHANGE_REQUEST_COMMENTED, target_id=str(change_request.pk))
    client.force_login(user("auditor"))

    page = client.get(f"/audit/?project={trail['project'].pk}").content.decode()

    rows = re.findall(r'<tr data-testid="audit-row">(.*?)</tr>', page, flags=re.S)
    row = next(r for r in rows if f'<td class="small muted nowrap">{event.pk}</td>' in r)
    assert f'<div class="people-text clamp" data-testid="audit-comment">Comment: {html.escape(body)}</div>' in row
    # and the whole text is in the row's detail
    detail = client.get(f"/audit/events/{event.pk}/", headers={"HX-Request": "true"}).content.decode()
    assert html.escape(body) in detail


def test_trail__approval_comment__shown_as_comment_in_its_row(client, trail) -> None:
    change_request = trail["change_request"]
    approving.change_request_approve(change_request=change_request, actor=user("pm"), comment="Fine for beta only")
    event = AuditEvent.objects.get(action=AuditAction.CHANGE_REQUEST_APPROVED, target_id=str(change_request.pk))
    client.force_login(user("auditor"))
    page = client.get(f"/audit/?project={trail['project'].pk}").content.decode()
    row = next(r for r in re.findall(r'<tr data-testid="audit-row">(.*?)</tr>', page, flags=re.S)
               if f'<td class="small muted nowrap">{event.pk}</td>' in r)
    assert "Comment: Fine for beta only" in row and "Reason: Fine for beta only" not in row


def test_event_detail__row_without_before__no_empty_diff_rows(client, trail) -> None:
    # Given rows recorded with no "before" (a request opened, a comment, a plan, an incident)
    events = [e for e in AuditEvent.objects.filter(project_id=trail["project"].pk, before__isnull=True)
              if e.after is not None]
    assert {AuditAction.CHANGE_REQUEST_CREATED, AuditAction.CHANGE_REQUEST_COMMENTED, AuditAction.PLAN_CREATED,
            AuditAction.INCIDENT_STARTED} <= {e.action for e in events}
    client.force_login(user("auditor"))
    for event in events:
        detail = client.get(f"/audit/events/{event.pk}/", headers={"HX-Request": "true"}).content.decode()
        cells = re.findall(r'<tr class="diff-\w+"><td><code>(.*?)</code></td><td><code>(.*?)</code></td>'
                           r'<td><code>(.*?)</code></td></tr>', detail, flags=re.S)
        # Then no row is the whole value, and every row has something on one side
        assert cells, event.action
        assert all(path != "(value)" and (before or after) for path, before, after in cells), (event.action, cells)


def test_readable_diff__empty_sides__left_out() -> None:
    assert readable_diff(None, {"comment": "hi"}) == [c for c in readable_diff(None, {"comment": "hi"})
                                                       if c.path == "comment"]
    assert [c.path for c in readable_diff(None, {"comment": "hi"})] == ["comment"]
    assert readable_diff({"surfaces": []}, {"surfaces": None}) == []
    assert readable_diff({}, None) == []
    assert [(c.path, c.before, c.after) for c in readable_diff({"a": {}}, {"a": {"b": 1}})] == [("a.b", "", "1")]
    assert [(c.path, c.before, c.after) for c in readable_diff({"x": []}, {"x": ["y"]})] == [("x", "[]", '["y"]')]


def _cycle(project: Any, flag: Flag, person: Any) -> None:
    """One of each: a change request opened, commented on and cancelled; a rollout plan made and
    discarded; incident mode started and lifted (and its flag turned off). Audit rows all by `person`."""
    development, production = (Environment.objects.get(project=project, key=k) for k in ("development", "production"))
    targeting = flag.targetings.get(environment=production)
    # (lifting leaves a flag of an ungoverned environment off: the drill turns it on again first)
    services.targeting_update(targeting=flag.targetings.get(environment=development), actor=TEST_ACTOR, enabled=True)
    incident = incident_mode.incident_start(environment=development, surfaces=[], reason="Drill", actor=person)
    incident_mode.incident_lift(incident=incident, reason="Drill over", actor=person)
    change_request = submitting.targeting_change_submit(targeting=targeting, changes={"enabled": True},
                                                        reason="Turn it on", actor=person)
    assert isinstance(change_request, ChangeRequest)
    approving.change_request_comment(change_request=change_request, body="Waiting for the pilot", actor=person)
    applying.change_request_cancel(change_request=change_request, actor=person, reason="Not yet")
    plan = design.plan_create(flag=flag, environment=development, baseline="none", candidate="read_only",
                              stages=[{"name": "Everyone", "percentage": 100_000}], actor=person, reason="Pilot")
    transitions.plan_discard(plan=plan, reason="Not this one", actor=person)


def test_trail__query_count__same_for_8_and_50_rows(client, demo) -> None:
    # Given a project where one person (editor and operator) runs cycles of changes
    project = make_project("drills")
    flag = make_string_flag(project)
    person = user("owner")
    for role in (Role.EDITOR, Role.OPERATOR):
        grant(project, person, role)
    grant(project, user("auditor"), Role.AUDITOR)
    client.force_login(user("auditor"))
    url = f"/audit/?project={project.pk}&actor={person.pk}"

    def page_queries() -> tuple[int, list[str]]:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        return len(queries.captured_queries), _target_cells(response.content.decode())

    # When the trail holds one cycle, and then seven
    _cycle(project, flag, person)
    few, few_cells = page_queries()
    one_cycle = AuditEvent.objects.filter(project_id=project.pk, actor=person).count()
    for _ in range(6):
        _cycle(project, flag, person)
    many, many_cells = page_queries()

    # Then the pages (8 rows, then a full page of 50) name every target, and cost the same
    assert len(few_cells) == one_cycle == 8 and len(many_cells) == 50
    for cells in (few_cells, many_cells):
        assert all("<a href=" in c for c in cells) and not any(ID_PAIR.search(c) for c in cells)
    assert {RolloutPlan.objects.filter(project=project).count(), Incident.objects.filter(project=project).count(),
            ChangeRequest.objects.filter(project=project).count()} == {7}
    assert many == few
