"""Incidents in view (issue 19, parts 4 and 7): the incident banner on the project's pages, an
off card that says what it serves and why, stopped flags marked in the list, the navigation
counting follow-ups, the incident preview before confirming, paused plans told after a lift,
reasons required before any dialog, every stage that needs approval marked, one timestamp
after a resume, and guardrail thresholds that cannot mean anything refused."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from flags import services as flag_services
from flags.models import Environment, Flag, Targeting
from notifications.models import Notification
from rollouts.change_control import incident_mode, kill_switch, submitting
from rollouts.forms import REASON_REQUIRED
from rollouts.models import ChangeRequest, Incident, ReleaseDecision, RolloutPlan
from rollouts.plans import design, measurement, transitions
from tests.html_forms import form_as_shown
from tests.rollouts.plans.support import (
    BASELINE,
    CANDIDATE,
    approve_and_apply,
    baked,
    environment,
    flag,
    fresh,
    make_plan,
    plan_url,
)
from tests.rollouts.support import BETA_WRITE, PROFILE, TOOL_MODE, as_user, production, user

pytestmark = pytest.mark.django_db

PROJECT = "support-assistant"
FLAG_LIST = f"/p/{PROJECT}/"
PROFILE_PAGE = f"/p/{PROJECT}/flags/{PROFILE}/"
TOOL_PAGE = f"/p/{PROJECT}/flags/{TOOL_MODE}/"
HTMX = {"HTTP_HX_REQUEST": "true"}


def _env(key: str) -> Environment:
    return Environment.objects.get(project__key=PROJECT, key=key)


def _start_incident(surfaces: list[str] | None = None, reason: str = "Provider outage",
                    env_key: str = "production") -> Incident:
    return incident_mode.incident_start(environment=_env(env_key), surfaces=surfaces or [], reason=reason,
                                        actor=user("operator"))


def _card(html: str, env_key: str) -> str:
    """The targeting card of one environment on the flag page."""
    start = html.index(f'data-testid="targeting-{env_key}"')
    end = html.find('data-testid="targeting-', start + 10)
    return html[start:end if end > 0 else len(html)]


def _text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", "", html).split())


def _stopped_by(action: str) -> AuditEvent:
    """The audit row a card's words come from: who stopped the flag, and when."""
    return AuditEvent.objects.filter(action=action).latest("id")


# --- 1. the banner ------------------------------------------------------------------------------


def test_banner__incident_on__shown_on_the_flag_list_and_flag_page_with_count_and_link(client: Any, demo: Any) -> None:
    incident = _start_incident()
    as_user(client, "owner")
    for url in (FLAG_LIST, PROFILE_PAGE, f"/p/{PROJECT}/rollouts/"):
        html = client.get(url).content.decode()
        assert 'data-testid="incident-banner"' in html, url
        banner = _text(html[html.index('data-testid="incident-banner"'):html.index("</div>", html.index(
            'data-testid="incident-banner"'))])
        started = timezone.localtime(incident.started_at).strftime("%H:%M")
        assert f"Incident mode is on in Production since {started} (by operator)" in banner, banner
        assert f"{len(incident.affected)} flags serve their fallbacks" in banner
        assert f'/p/{PROJECT}/incidents/#incident-{incident.pk}' in html


def test_banner__no_incident_or_lifted__none_and_no_incident_query(client: Any, demo: Any) -> None:
    as_user(client, "owner")
    with CaptureQueriesContext(connection) as captured:
        html = client.get(FLAG_LIST).content.decode()
    assert 'data-testid="incident-banner"' not in html
    assert len([q for q in captured.captured_queries if '"rollouts_incident"' in q["sql"]]) <= 1
    incident = _start_incident()
    incident_mode.incident_lift(incident=incident, reason="Provider back", actor=user("operator"))
    assert 'data-testid="incident-banner"' not in client.get(FLAG_LIST).content.decode()


def test_banner__one_query_for_the_incident_whatever_the_page_shows(client: Any, demo: Any) -> None:
    _start_incident()
    as_user(client, "owner")
    with CaptureQueriesContext(connection) as captured:
        html = client.get(PROFILE_PAGE).content.decode()
    assert 'data-testid="incident-banner"' in html
    assert len([q for q in captured.captured_queries if 'FROM "rollouts_incident"' in q["sql"]]) == 1


def test_banner__another_projects_incident__not_shown(client: Any, demo: Any, make_user: Any) -> None:
    _start_incident()
    stranger = make_user("stranger")
    client.force_login(stranger)
    assert client.get(FLAG_LIST).status_code == 404  # and nothing of the incident leaks into it


# --- 2. what an off card serves, and why ------------------------------------------------------------


def test_card__kill_switch__killed_badge_served_value_who_when_why(client: Any, demo: Any) -> None:
    kill_switch.killswitch_flip(targeting=production(PROFILE), reason="Stale citations", actor=user("operator"))
    flag = Flag.objects.select_related("fallback_variation").get(key=PROFILE)
    html = as_user(client, "owner").get(PROFILE_PAGE).content.decode()
    card = _text(_card(html, "production"))
    assert "Killed" in card
    assert f"Off: serves {flag.fallback_variation.key} (" in card
    row = _stopped_by("killswitch.flipped")
    when = timezone.localtime(row.created_at).strftime("%-d %b %Y %H:%M")
    assert f"kill switch by {row.actor_label} on {when}: Stale citations" in card
    staging = _text(_card(html, "staging"))
    assert "Killed" not in staging


def test_card__incident__says_incident_mode_since_with_link_then_lifted_left_off(client: Any, demo: Any) -> None:
    incident = _start_incident(surfaces=["agent_tools"], reason="Tool misuse")
    flag = Flag.objects.select_related("fallback_variation").get(key=TOOL_MODE)
    html = as_user(client, "owner").get(TOOL_PAGE).content.decode()
    card = _text(_card(html, "production"))
    assert f"Off: serves {flag.fallback_variation.key} ({flag.fallback_variation.value}) — incident mode since" in card
    assert f"(by {_stopped_by('incident.started').actor_label}): Tool misuse" in card and f"incident {incident.pk}" in card
    assert "Incident" in card
    # The flag changes during the incident, so the lift leaves it off: the card says so
    flag_services.targeting_update(targeting=production(TOOL_MODE), actor=user("owner"), rules=[], reason="simplify")
    incident_mode.incident_lift(incident=incident, reason="Fixed", actor=user("operator"))
    card = _text(_card(as_user(client, "owner").get(TOOL_PAGE).content.decode(), "production"))
    assert "lifted since but left off because it changed meanwhile" in card


def test_card__turned_off_by_a_person__who_and_when(client: Any, demo: Any) -> None:
    staging = Targeting.objects.get(flag__key=PROFILE, environment__key="staging")
    flag_services.targeting_update(targeting=staging, actor=user("owner"), enabled=False, reason="Pausing tests")
    card = _text(_card(as_user(client, "lead").get(PROFILE_PAGE).content.decode(), "staging"))
    assert f"turned off by {_stopped_by('targeting.updated').actor_label} on" in card and "Pausing tests" in card
    assert "Killed" not in card and "incident mode" not in card


def test_card__after_the_kill_switch_htmx__the_returned_card_says_why(client: Any, demo: Any) -> None:
    url = reverse("rollouts:killswitch", kwargs={"project_key": PROJECT, "flag_key": PROFILE,
                                                 "environment_key": "production"})
    response = as_user(client, "operator").post(url, {"reason": "Bad answers"}, **HTMX)
    assert response.status_code == 200
    assert f"kill switch by {_stopped_by('killswitch.flipped').actor_label} on" in _text(response.content.decode())
    assert "Bad answers" in response.content.decode()


def test_cards__queries_do_not_grow_with_stopped_environments(client: Any, demo: Any) -> None:
    as_user(client, "owner")
    flag_services.targeting_update(targeting=Targeting.objects.get(flag__key=PROFILE, environment__key="staging"),
                                   actor=user("owner"), enabled=False)
    with CaptureQueriesContext(connection) as one:
        client.get(PROFILE_PAGE)
    kill_switch.killswitch_flip(targeting=production(PROFILE), reason="x", actor=user("operator"))
    development = Targeting.objects.get(flag__key=PROFILE, environment__key="development")
    if development.enabled:
        flag_services.targeting_update(targeting=development, actor=user("owner"), enabled=False)
    with CaptureQueriesContext(connection) as three:
        html = client.get(PROFILE_PAGE).content.decode()
    assert html.count('data-testid="stop-fact"') == 3
    def audit(captured: CaptureQueriesContext) -> int:
        return len([q for q in captured.captured_queries if '"audit_auditevent"' in q["sql"]])

    assert audit(three) == audit(one) <= 2  # the stopping rows of every card at once
    assert len(three.captured_queries) <= len(one.captured_queries) + 2


def test_flag_list__killed_and_incident_badges(client: Any, demo: Any) -> None:
    kill_switch.killswitch_flip(targeting=production(PROFILE), reason="x", actor=user("operator"))
    _start_incident(surfaces=["agent_tools"])
    html = as_user(client, "owner").get(FLAG_LIST).content.decode()
    rows = {key: _text(row) for row in re.findall(r"<tr>.*?</tr>", html, re.S)
            for key in re.findall(r'/flags/([a-z_]+)/"', row)[:1]}
    assert "Killed" in rows[PROFILE] and "Incident" not in rows[PROFILE]
    assert "Incident" in rows[TOOL_MODE] and "Killed" not in rows[TOOL_MODE]


# --- 3. the navigation counts follow-ups ------------------------------------------------------------


def test_nav__counts_change_requests_and_follow_ups_with_a_label_saying_both(client: Any, demo: Any) -> None:
    as_user(client, "pm")
    nav = reverse("rollouts:nav_approvals")
    assert 'class="count"' not in client.get(nav).content.decode()
    submitting.targeting_change_submit(targeting=production(), changes={"rules": [*production().rules, BETA_WRITE]},
                                       reason="Let beta accounts write tickets", actor=user("owner"))
    kill_switch.killswitch_flip(targeting=production(PROFILE), reason="Stale citations", actor=user("operator"))
    html = client.get(nav).content.decode()
    assert 'aria-label="1 change request and 1 follow-up wait for you"' in html
    assert re.search(r'<span class="count"[^>]*>2</span>', html)
    # The owner cannot approve: only the follow-up waits for them
    html = as_user(client, "owner").get(nav).content.decode()
    assert 'aria-label="1 follow-up waits for you"' in html and re.search(r'<span class="count"[^>]*>1</span>', html)
    # The operator opened it: nothing waits for them
    assert 'class="count"' not in as_user(client, "operator").get(nav).content.decode()


# --- 4. the incident preview -------------------------------------------------------------------------


def _preview_url() -> str:
    return reverse("rollouts:incident_preview", kwargs={"project_key": PROJECT})


def test_preview__lists_the_flags_it_would_stop_and_what_each_serves__writes_nothing(client: Any, demo: Any) -> None:
    as_user(client, "operator")
    before = AuditEvent.objects.count()
    on = list(Targeting.objects.filter(environment=_env("production"), enabled=True, flag__behavior_surface="agent_tools")
              .select_related("flag__fallback_variation"))
    html = client.get(_preview_url(), {"environment": "production", "surfaces": "agent_tools"}, **HTMX).content.decode()
    for targeting in on:
        assert f"<code>{targeting.flag.key}</code>" in html and f"<code>{targeting.flag.fallback_variation.key}</code>" in html
    assert PROFILE not in html
    assert f'data-confirm="Send {len(on)} flag in Production to its fallback now?"' in html
    everything = Targeting.objects.filter(environment=_env("production"), enabled=True).count()
    html = client.get(_preview_url(), {"environment": "production"}).content.decode()
    assert f'data-confirm="Send {everything} flags in Production to their fallback now?"' in html
    assert AuditEvent.objects.count() == before and not Incident.objects.exists()


def test_preview__on_the_incident_page_before_confirming_and_refused_to_non_operators(client: Any, demo: Any) -> None:
    html = as_user(client, "operator").get(f"/p/{PROJECT}/incidents/").content.decode()
    assert 'id="incident-preview"' in html and 'data-confirm-from="#incident-preview"' in html
    assert f"<code>{TOOL_MODE}</code>" in html  # the governed environment is chosen at first
    assert as_user(client, "owner").get(_preview_url(), {"environment": "production"}, **HTMX).status_code == 403


# --- 5. paused plans after a lift ---------------------------------------------------------------------


def _running_plan() -> RolloutPlan:
    plan = make_plan("staging")
    return transitions.plan_start(plan=plan, reason="Go", actor=user("owner"))


def test_lift__owner_of_a_paused_plan_notified__plan_stays_paused__audited__page_says_so(client: Any,
                                                                                          catalog: Any) -> None:
    plan = _running_plan()
    incident = _start_incident(env_key="staging")
    assert fresh(plan).status == RolloutPlan.Status.PAUSED
    assert incident_mode.paused_plan_ids(Incident.objects.get(pk=incident.pk)) == [plan.pk]
    html = as_user(client, "owner").get(plan_url(plan)).content.decode()
    assert f"Paused by incident {incident.pk}" in _text(html) and "still on in Staging" in _text(html)
    lifted = incident_mode.incident_lift(incident=incident, reason="Provider back", actor=user("operator"))
    assert fresh(plan).status == RolloutPlan.Status.PAUSED  # never resumed by the lift
    title = f"Incident lifted: plan {plan.pk} for flag {plan.flag.key} is still paused; resume when ready"
    assert list(Notification.objects.filter(recipient=user("owner"), kind="incident.plan_paused")
                .values_list("title", flat=True)) == [title]
    assert not Notification.objects.filter(recipient=user("operator"), kind="incident.plan_paused").exists()
    row = AuditEvent.objects.get(action="incident.lifted")
    assert row.after["plans_still_paused"] == [plan.pk] and f"{plan.pk}" in row.summary
    assert [p.pk for p in lifted.plans_still_paused] == [plan.pk]
    text = _text(as_user(client, "owner").get(plan_url(plan)).content.decode())
    lifted_at = timezone.localtime(Incident.objects.get(pk=incident.pk).lifted_at).strftime("%H:%M")
    assert (f"Paused by incident {incident.pk} (lifted " in text and f"{lifted_at} by operator): resume when the "
            "evidence is good" in text)


def test_lift__a_plan_resumed_during_the_incident__no_notice(catalog: Any) -> None:
    plan = _running_plan()
    incident = _start_incident(env_key="staging")
    flag_services.targeting_update(targeting=Targeting.objects.get(flag=plan.flag, environment=plan.environment),
                                   actor=user("owner"), enabled=True, reason="Our flag is fine")
    transitions.plan_resume(plan=plan, reason="Evidence fine", actor=user("owner"))
    lifted = incident_mode.incident_lift(incident=incident, reason="Over", actor=user("operator"))
    assert lifted.plans_still_paused == []
    assert not Notification.objects.filter(kind="incident.plan_paused").exists()
    assert AuditEvent.objects.get(action="incident.lifted").after["plans_still_paused"] == []


# --- 6. the server still checks a required reason ----------------------------------------------------------


def test_reason__empty__refused_by_the_server_beside_the_field__forms_validate_first(client: Any, catalog: Any) -> None:
    url = reverse("rollouts:killswitch", kwargs={"project_key": PROJECT, "flag_key": PROFILE,
                                                 "environment_key": "production"})
    as_user(client, "operator")
    form = client.get(url, **HTMX).content.decode()
    assert "data-validate-first" in form and re.search(r"<textarea[^>]*required", form)
    assert f'data-required-message="{REASON_REQUIRED}"' in form
    response = client.post(url, {"reason": "  "}, **HTMX)
    assert response.status_code == 422 and REASON_REQUIRED in response.content.decode()
    assert production(PROFILE).enabled is True
    plan = _running_plan()
    page = as_user(client, "owner").get(plan_url(plan)).content.decode()
    assert re.search(r'<form[^>]*id="plan-actions"[^>]*data-validate-first', page)
    transitions.plan_pause(plan=plan, reason="Look", actor=user("owner"))
    response = client.post(plan_url(plan, "resume"), {"reason": ""}, **HTMX)
    assert response.status_code == 422 and REASON_REQUIRED in response.content.decode()
    assert fresh(plan).status == RolloutPlan.Status.PAUSED


# --- 7. every stage that needs approval is marked ----------------------------------------------------------


def test_plan_page__governed__every_widening_stage_marked_and_the_open_request_linked(client: Any,
                                                                                      catalog: Any) -> None:
    plan = make_plan("production")
    plan = transitions.plan_start(plan=plan, reason="Go", actor=user("owner"))
    first = plan.pending_change_request  # None when production served stage 1's audience already
    if first is not None:
        approve_and_apply(first)
    plan = baked(fresh(plan))
    plan = transitions.plan_advance(plan=plan, reason="Next", actor=user("owner"))
    second = fresh(plan).pending_change_request
    assert second is not None and not design.plan_stages(plan)[1].needs_approval  # opened by the policy
    html = as_user(client, "owner").get(plan_url(plan)).content.decode()
    stages = html[html.index('data-testid="plan-stages"'):html.index("</ol>", html.index('data-testid="plan-stages"'))]
    items = re.findall(r"<li class=\"stage-(\w+)\".*?</li>", stages, re.S)
    assert items == ["current", "waiting", "later", "later"]
    rows = re.findall(r"<li class=\"stage-\w+\".*?</li>", stages, re.S)
    if first is not None:
        assert f"CR-{first.pk}" in rows[0] and "entered with approval" in rows[0]
    assert "waiting for approval" in rows[1] and f'/changes/{second.pk}/' in rows[1]
    for later in rows[2:]:
        assert 'data-testid="stage-needs-approval"' in later
        assert "governed environment" in later


def test_plan_page__not_governed__no_stage_marked_unless_set(client: Any, catalog: Any) -> None:
    plan = make_plan("staging", last_needs_approval=True)
    html = as_user(client, "owner").get(plan_url(plan)).content.decode()
    assert html.count('data-testid="stage-needs-approval"') == 1
    assert "set on this stage" in html


# --- 8. one timestamp after a resume -------------------------------------------------------------------------


def test_plan_page__after_resume__entry_and_resume_labelled__evidence_from_the_resume(client: Any,
                                                                                      catalog: Any) -> None:
    plan = _running_plan()
    entered = timezone.now() - datetime.timedelta(hours=2)
    RolloutPlan.objects.filter(pk=plan.pk).update(stage_entered_at=entered)
    ReleaseDecision.objects.filter(plan=plan, action="start").update(created_at=entered)
    transitions.plan_pause(plan=fresh(plan), reason="Look", actor=user("owner"))
    plan = transitions.plan_resume(plan=fresh(plan), reason="Fine", actor=user("owner"))
    resumed = fresh(plan).stage_entered_at
    assert resumed > entered
    # The guardrail code counts evidence from the resume
    window = measurement.plan_evidence(fresh(plan))["window"]
    assert window["start"] == resumed.replace(second=0, microsecond=0).isoformat()
    text = _text(as_user(client, "owner").get(plan_url(plan)).content.decode())
    local = timezone.localtime
    assert f"stage entered {local(entered):%-d %b %H:%M}, resumed {local(resumed):%-d %b %H:%M}: bake time and " \
           f"evidence count from {local(resumed):%H:%M}" in text
    assert (f"Evidence counted from {local(resumed):%-d %b %H:%M} (resumed; stage 1 entered "
            f"{local(entered):%-d %b %H:%M})") in text


# --- 9. thresholds that cannot mean anything --------------------------------------------------------------------


def _create_url() -> str:
    return reverse("rollouts:plan_create", kwargs={"project_key": PROJECT, "flag_key": PROFILE})


def _plan_form(client: Any) -> dict[str, Any]:
    data = form_as_shown(client.get(_create_url()).content.decode(), "stages-TOTAL_FORMS")
    return {**data, "on_breach": "pause", "environment": "staging", "candidate": CANDIDATE, "reason": "Ship v4"}


@pytest.mark.parametrize(("metric", "kind", "threshold", "words"), [
    ("correction_rate", "absolute_min", "0", "always holds for a rate"),
    ("incident_signal", "absolute_max", "-1", "never met by a count"),
    ("latency_p95", "relative_max", "0", "positive factor"),
])
def test_plan_form__vacuous_threshold__refused_beside_it_nothing_saved(client: Any, catalog: Any, metric: str,
                                                                       kind: str, threshold: str, words: str) -> None:
    as_user(client, "owner")
    data = {**_plan_form(client), "guardrails-0-metric": metric, "guardrails-0-kind": kind,
            "guardrails-0-threshold": threshold}
    before = AuditEvent.objects.count()
    response = client.post(_create_url(), data)
    assert response.status_code == 422
    html = response.content.decode()
    field = re.search(r'<div class="field has-error">\s*<label for="id_guardrails-0-threshold".*?</div>', html, re.S)
    assert field is not None and words in field.group(0), html[:200]
    assert not RolloutPlan.objects.exists() and AuditEvent.objects.count() == before


def test_plan_form__meaningful_zero__at_most_zero_incidents_accepted(client: Any, catalog: Any) -> None:
    as_user(client, "owner")
    data = {**_plan_form(client), "guardrails-0-metric": "incident_signal", "guardrails-0-kind": "absolute_max",
            "guardrails-0-threshold": "0"}
    response = client.post(_create_url(), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert RolloutPlan.objects.count() == 1


def test_plan_create_service__vacuous_threshold__refused_on_the_guardrail(catalog: Any) -> None:
    stage = {"name": "All", "segments": [], "percentage": 100_000, "min_bake_minutes": 0,
             "guardrails": [{"metric": "correction_rate", "kind": "absolute_min", "threshold": 0, "min_samples": 10}]}
    with pytest.raises(ValidationError) as refused:
        design.plan_create(flag=flag(), environment=environment("staging"), baseline=BASELINE, candidate=CANDIDATE,
                           stages=[stage], actor=user("owner"), reason="x")
    assert "always holds" in refused.value.message_dict["stages[0].guardrails[0]"][0]
    assert not RolloutPlan.objects.exists() and not ChangeRequest.objects.exists()
