"""Every role against every console endpoint, on its own project and on another. The list of
endpoints comes from the URL configuration: a new view missing from RULES fails the suite."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from audit.models import AuditEvent
from flags import services
from flags.constants import Role
from flags.demo import seed_demo
from flags.models import Environment, Flag, Membership, Project, SdkKey
from flags.services.access_tokens import service_token_create
from identity.services import group_rule_create
from rollouts.change_control.incident_mode import incident_start
from rollouts.change_control.submitting import targeting_change_submit as submit_change
from rollouts.plans.design import plan_create
from tests.factories import TEST_ACTOR, make_project, make_string_flag
from webhooks.services import webhook_create

ROLES = [Role.VIEWER, Role.EDITOR, Role.APPROVER, Role.OPERATOR, Role.AUDITOR, Role.ADMIN]
ANY_MEMBER = frozenset(ROLES)
EDITORS = frozenset({Role.EDITOR})
ADMINS = frozenset({Role.ADMIN})
AUDITORS = frozenset({Role.AUDITOR})
APPROVERS = frozenset({Role.APPROVER})
OPERATORS = frozenset({Role.OPERATOR})
PARTICIPANTS = frozenset({Role.EDITOR, Role.APPROVER, Role.OPERATOR})


def _flag_kwargs(p: dict[str, Any]) -> dict[str, Any]:
    return {"project_key": p["project"].key, "flag_key": p["flag"].key}


def _change_kwargs(p: dict[str, Any]) -> dict[str, Any]:
    return {"project_key": p["project"].key, "pk": p["change_request"].pk}


def _plan_kwargs(p: dict[str, Any]) -> dict[str, Any]:
    return {"project_key": p["project"].key, "pk": p["plan"].pk}


def _webhook_kwargs(p: dict[str, Any]) -> dict[str, Any]:
    return {"project_key": p["project"].key, "webhook_id": p["webhook"].pk}


# url name -> (method, who may, kwargs builder, POST data builder). "who may" is the set of
# roles allowed on their own project; everyone else in it gets 403, everyone outside it 404.
RULES: dict[str, tuple[str, frozenset[Role] | None, Callable[[dict], dict], Callable[[dict], dict]]] = {
    "project_list": ("GET", None, lambda p: {}, lambda p: {}),
    "flag_list": ("GET", ANY_MEMBER, lambda p: {"project_key": p["project"].key}, lambda p: {}),
    "flag_detail": ("GET", ANY_MEMBER, _flag_kwargs, lambda p: {}),
    "flag_history": ("GET", ANY_MEMBER, _flag_kwargs, lambda p: {}),
    "variation_row": ("GET", ANY_MEMBER, lambda p: {**_flag_kwargs(p), "variation_key": "write"}, lambda p: {}),
    "segment_list": ("GET", ANY_MEMBER, lambda p: {"project_key": p["project"].key}, lambda p: {}),
    "flag_create": ("POST", EDITORS, lambda p: {"project_key": p["project"].key},
                    lambda p: {"key": "matrix_flag", "name": "M", "value_type": "boolean", "behavior_surface": "other",
                               "lifetime": "release"}),
    "flag_archive": ("POST", EDITORS, _flag_kwargs, lambda p: {"action": "archive", "reason": "matrix"}),
    "flag_edit": ("POST", EDITORS, _flag_kwargs, lambda p: {"name": "renamed", "behavior_surface": "agent_tools",
                                                            "lifetime": "release", "fallback_variation": "none",
                                                            "version": "1"}),
    "variation_create": ("POST", EDITORS, _flag_kwargs, lambda p: {"key": "extra", "value": "extra", "risk_rank": "0"}),
    "variation_edit": ("POST", EDITORS, lambda p: {**_flag_kwargs(p), "variation_key": "write"},
                       lambda p: {"value": "write", "risk_rank": "4", "name": "Write"}),
    "variation_delete": ("POST", EDITORS, lambda p: {**_flag_kwargs(p), "variation_key": "write"}, lambda p: {}),
    "targeting_edit": ("GET", EDITORS, lambda p: {**_flag_kwargs(p), "environment_key": "development"}, lambda p: {}),
    "targeting_toggle": ("POST", EDITORS, lambda p: {**_flag_kwargs(p), "environment_key": "development"},
                         lambda p: {"version": "1"}),
    # the rule editor's buttons (they write nothing): as the proposal page in a governed environment
    "targeting_rule_editor": ("POST", EDITORS | OPERATORS, lambda p: {**_flag_kwargs(p), "environment_key": "production"},
                              lambda p: {"op": "add-rule", "rules_mode": "builder"}),
    "segment_rule_editor": ("POST", EDITORS, lambda p: {"project_key": p["project"].key},
                            lambda p: {"op": "add-rule", "rules_mode": "builder"}),
    "rollouts:segment_create": ("POST", EDITORS, lambda p: {"project_key": p["project"].key},
                       lambda p: {"key": "matrix_segment", "name": "M"}),
    "rollouts:segment_edit": ("GET", EDITORS, lambda p: {"project_key": p["project"].key, "segment_key": "matrix"}, lambda p: {}),
    "segment_delete": ("POST", EDITORS, lambda p: {"project_key": p["project"].key, "segment_key": "matrix"},
                       lambda p: {}),
    "members": ("GET", ADMINS, lambda p: {"project_key": p["project"].key}, lambda p: {}),
    "member_grant": ("POST", ADMINS, lambda p: {"project_key": p["project"].key},
                     lambda p: {"username": p["newcomer"].username, "role": "viewer"}),
    "member_revoke": ("POST", ADMINS, lambda p: {"project_key": p["project"].key},
                      lambda p: {"user": p["viewer"].pk, "role": "viewer"}),
    "project_time_zone": ("POST", ADMINS, lambda p: {"project_key": p["project"].key},
                          lambda p: {"time_zone": "Europe/Paris"}),
    "sdk_keys": ("GET", ADMINS, lambda p: {"project_key": p["project"].key}, lambda p: {}),
    "sdk_key_revoke": ("POST", ADMINS, lambda p: {"project_key": p["project"].key, "key_id": p["sdk_key"].pk},
                       lambda p: {}),
    "service_tokens": ("POST", ADMINS, lambda p: {"project_key": p["project"].key},
                       lambda p: {"name": "matrix", "scopes": ["read"], "lifetime": "30"}),
    "service_token_revoke": ("POST", ADMINS, lambda p: {"project_key": p["project"].key,
                                                        "token_id": p["service_token"].pk}, lambda p: {}),
    "webhooks": ("POST", ADMINS, lambda p: {"project_key": p["project"].key},
                 lambda p: {"url": "https://hooks.example.com/matrix", "events": ["flag."]}),
    "webhook_set_active": ("POST", ADMINS, _webhook_kwargs, lambda p: {"active": "0"}),
    "webhook_delete": ("POST", ADMINS, _webhook_kwargs, lambda p: {}),
    "webhook_test": ("POST", ADMINS, _webhook_kwargs, lambda p: {}),
    "audit_explorer": ("GET", AUDITORS | ADMINS, lambda p: {}, lambda p: {}),
    "audit_export": ("GET", AUDITORS | ADMINS, lambda p: {"fmt": "csv"}, lambda p: {}),
    "audit_event_detail": ("GET", ANY_MEMBER, lambda p: {"event_id": p["flag_event"].pk}, lambda p: {}),
    # rollouts: change control (the change request was opened by the editor)
    "rollouts:inbox": ("GET", None, lambda p: {}, lambda p: {}),
    "rollouts:nav_approvals": ("GET", None, lambda p: {}, lambda p: {}),
    "rollouts:targeting_propose": ("POST", EDITORS | OPERATORS, lambda p: {**_flag_kwargs(p), "environment_key": "production"},
                                   lambda p: {"assignment_unit": "accountId", "default_variation": "none",
                                              "version": "1", "reason": "matrix"}),
    "rollouts:targeting_preview": ("POST", EDITORS | OPERATORS, lambda p: {**_flag_kwargs(p), "environment_key": "production"},
                                   lambda p: {"assignment_unit": "accountId", "default_variation": "none",
                                              "version": "1"}),
    "rollouts:killswitch": ("GET", OPERATORS, lambda p: {**_flag_kwargs(p), "environment_key": "development"},
                            lambda p: {}),
    "rollouts:flag_control": ("GET", ANY_MEMBER, _flag_kwargs, lambda p: {}),
    "rollouts:contract_change": ("POST", EDITORS, _flag_kwargs,
                                 lambda p: {"name": "renamed", "behavior_surface": "agent_tools", "lifetime": "release",
                                            "fallback_variation": "none", "version": "1"}),
    "rollouts:variation_change": ("POST", EDITORS, lambda p: {**_flag_kwargs(p), "variation_key": "write"},
                                  lambda p: {"value": "write", "risk_rank": "4", "name": "Write"}),
    "rollouts:change_request": ("GET", ANY_MEMBER, _change_kwargs, lambda p: {}),
    "rollouts:change_request_approve": ("POST", APPROVERS, _change_kwargs, lambda p: {}),
    "rollouts:change_request_reject": ("POST", APPROVERS, _change_kwargs, lambda p: {"comment": "no"}),
    "rollouts:change_request_comment": ("POST", PARTICIPANTS, _change_kwargs, lambda p: {"body": "hello"}),
    "rollouts:change_request_apply": ("POST", EDITORS, _change_kwargs, lambda p: {}),
    "rollouts:change_request_schedule": ("POST", EDITORS, _change_kwargs,
                                         lambda p: {"scheduled_for": "2999-01-01T10:00"}),
    "rollouts:change_request_cancel": ("POST", EDITORS, _change_kwargs, lambda p: {}),
    "rollouts:incidents": ("POST", OPERATORS, lambda p: {"project_key": p["project"].key},
                           lambda p: {"environment": "production", "reason": "matrix"}),
    "rollouts:incident_preview": ("GET", OPERATORS, lambda p: {"project_key": p["project"].key}, lambda p: {}),
    "rollouts:incident_lift": ("POST", OPERATORS, lambda p: {"project_key": p["project"].key,
                                                             "pk": p["incident"].pk}, lambda p: {"reason": "over"}),
    "rollouts:follow_up_acknowledge": ("POST", PARTICIPANTS, lambda p: {"project_key": p["project"].key,
                                                                        "pk": p["follow_up"].pk},
                                       lambda p: {"note": "seen"}),
    "rollouts:approval_policies": ("POST", ADMINS, lambda p: {"project_key": p["project"].key},
                                   lambda p: {"environment": "production", "production-approvals_for_escalation": "2",
                                              "production-approvals_otherwise": "1",
                                              "production-expire_after_days": "5"}),
    # rollout plans: members read; owners and editors plan and steer; operators also stop
    "rollouts:plan_board": ("GET", ANY_MEMBER, lambda p: {"project_key": p["project"].key}, lambda p: {}),
    "rollouts:plan_detail": ("GET", ANY_MEMBER, _plan_kwargs, lambda p: {}),
    "rollouts:plan_create": ("POST", EDITORS, _flag_kwargs, lambda p: {"environment": "development"}),
    "rollouts:plan_action": ("POST", EDITORS | OPERATORS, lambda p: {**_plan_kwargs(p), "action": "pause"},
                             lambda p: {"reason": "matrix"}),
    # flags as code: any member exports; editors import (a preview POST writes nothing)
    "rollouts:contract_export": ("GET", ANY_MEMBER, _flag_kwargs, lambda p: {}),
    "rollouts:contracts_export": ("GET", ANY_MEMBER, lambda p: {"project_key": p["project"].key}, lambda p: {}),
    "rollouts:contracts_import": ("POST", EDITORS, lambda p: {"project_key": p["project"].key},
                                  lambda p: {"text": "ai_featureops_contract: {flag_key: tool_mode, name: renamed}",
                                             "reason": "matrix", "action": "preview"}),
    # single sign-on: project admins edit their project's sign-in role rules and sign members out; staff read all
    "identity:project_sign_in": ("GET", ADMINS, lambda p: {"project_key": p["project"].key}, lambda p: {}),
    "identity:rule_create": ("POST", ADMINS, lambda p: {"project_key": p["project"].key},
                             lambda p: {"group": "matrix-group", "role": "viewer"}),
    "identity:rule_update": ("POST", ADMINS, lambda p: {"project_key": p["project"].key, "rule_id": p["rule"].pk},
                             lambda p: {f"rule-{p['rule'].pk}-group": "renamed", f"rule-{p['rule'].pk}-role": "viewer"}),
    "identity:rule_delete": ("POST", ADMINS, lambda p: {"project_key": p["project"].key, "rule_id": p["rule"].pk},
                             lambda p: {}),
    "identity:sessions_revoke": ("POST", ADMINS, lambda p: {"project_key": p["project"].key},
                                 lambda p: {"user": p["viewer"].pk}),
    "identity:all_rules": ("GET", frozenset(), lambda p: {}, lambda p: {}),
}
# Endpoints that are not project-scoped: "another project" cannot apply.
GLOBAL = {"project_list", "audit_explorer", "audit_export", "rollouts:inbox", "rollouts:nav_approvals",
          "identity:all_rules"}
# A person's own API tokens: no role decides, only whose they are (tests/api/test_tokens.py).
PERSONAL = {"personal_tokens", "personal_token_revoke"}
# Signing in through the identity provider: no one is signed in yet (tests/identity/test_sign_in.py).
SIGN_IN = {"identity:oidc_login", "identity:oidc_callback"}


def _console_url_names() -> set[str]:
    """flags' names bare, rollouts' and identity's with their namespace."""
    names: set[str] = set()
    for entry in get_resolver().url_patterns:
        if isinstance(entry, URLResolver) and entry.namespace in ("flags", "rollouts", "identity"):
            prefix = "" if entry.namespace == "flags" else f"{entry.namespace}:"
            names |= {prefix + p.name for p in entry.url_patterns if isinstance(p, URLPattern)}
    return names


def test_rules__cover_every_console_endpoint() -> None:
    names = _console_url_names()
    assert names, "no console URLs found"
    assert names - set(RULES) - PERSONAL - SIGN_IN == set(), "declare who may use these new endpoints in RULES"
    assert set(RULES) - names == set()


def _change_control(project: Project, flag: Flag, editor: Any, operator: Any) -> dict[str, Any]:
    """A change request by the editor (turning the flag on in production), and an incident in
    development with its follow-up, opened by the operator."""
    production = flag.targetings.get(environment__key="production")
    change_request = submit_change(targeting=production, changes={"enabled": True}, reason="on", actor=editor)
    development = flag.targetings.get(environment__key="development")
    services.targeting_update(targeting=development, actor=TEST_ACTOR, enabled=True)
    incident = incident_start(environment=development.environment, surfaces=[], reason="matrix", actor=operator)
    plan = plan_create(flag=flag, environment=development.environment, baseline="none", candidate="read_only",
                       stages=[{"name": "Half", "segments": [], "percentage": 50_000}], actor=editor, reason="matrix")
    return {"change_request": change_request, "incident": incident, "follow_up": incident.follow_ups.get(),
            "plan": plan}


def _world(make_user: Callable[..., Any]) -> dict[str, Any]:
    """Two projects; a user per role in the first, nobody of them in the second."""
    mine = make_project("mine")
    flag = make_string_flag(mine)
    services.segment_create(project=mine, key="matrix", name="Matrix", actor=TEST_ACTOR)
    sdk_key, _ = services.sdk_key_create(environment=mine.environments.get(key="development"), name="k", actor=TEST_ACTOR)
    users = {}
    for role in ROLES:
        users[role] = make_user(f"u_{role}")
        services.membership_grant(project=mine, user=users[role], role=role, actor=TEST_ACTOR)
    theirs = make_project("theirs")
    their_flag = make_string_flag(theirs)
    services.segment_create(project=theirs, key="matrix", name="Matrix", actor=TEST_ACTOR)
    their_key, _ = services.sdk_key_create(environment=theirs.environments.get(key="development"), name="k",
                                           actor=TEST_ACTOR)
    theirs_viewer = make_user("their_viewer")
    services.membership_grant(project=theirs, user=theirs_viewer, role=Role.VIEWER, actor=TEST_ACTOR)
    their_people = {role: make_user(f"their_{role}") for role in (Role.EDITOR, Role.OPERATOR)}
    for role, person in their_people.items():
        services.membership_grant(project=theirs, user=person, role=role, actor=TEST_ACTOR)
    mine_control = _change_control(mine, flag, users[Role.EDITOR], users[Role.OPERATOR])
    mine_control["rule"] = group_rule_create(project=mine, group="matrix", role=Role.VIEWER, actor=TEST_ACTOR)
    their_admin = make_user("their_admin")
    services.membership_grant(project=theirs, user=their_admin, role=Role.ADMIN, actor=TEST_ACTOR)
    expiry = timezone.now() + datetime.timedelta(days=1)
    mine_control["service_token"], _ = service_token_create(project=mine, name="matrix", scopes=["read"],
                                                            expires_at=expiry, actor=users[Role.ADMIN])
    mine_control["webhook"], _ = webhook_create(project_id=mine.pk, url="https://hooks.example.com/mine", events=[],
                                                actor=TEST_ACTOR)
    theirs_control = _change_control(theirs, their_flag, their_people[Role.EDITOR], their_people[Role.OPERATOR])
    theirs_control["rule"] = group_rule_create(project=theirs, group="matrix", role=Role.VIEWER, actor=TEST_ACTOR)
    theirs_control["service_token"], _ = service_token_create(project=theirs, name="matrix", scopes=["read"],
                                                              expires_at=expiry, actor=their_admin)
    theirs_control["webhook"], _ = webhook_create(project_id=theirs.pk, url="https://hooks.example.com/theirs",
                                                  events=[], actor=TEST_ACTOR)
    return {
        "users": users, "outsider": make_user("outsider"),
        "mine": {"project": mine, "flag": flag, "sdk_key": sdk_key, "newcomer": make_user("newcomer"),
                 "viewer": users[Role.VIEWER],
                 "flag_event": AuditEvent.objects.get(action="flag.created", flag_id=flag.pk), **mine_control},
        "theirs": {"project": theirs, "flag": their_flag, "sdk_key": their_key, "newcomer": users[Role.VIEWER],
                   "viewer": theirs_viewer,
                   "flag_event": AuditEvent.objects.get(action="flag.created", flag_id=their_flag.pk),
                   **theirs_control},
    }


def _call(client: Any, name: str, objects: dict[str, Any], htmx: bool = False) -> Any:
    from django.urls import reverse

    method, _, kwargs, data = RULES[name]
    url = reverse(name if ":" in name else f"flags:{name}", kwargs=kwargs(objects))
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(url, data(objects), headers=headers) if method == "POST" else client.get(url, headers=headers)


def _allowed(name: str, role: str) -> bool:
    allowed = RULES[name][1]
    return allowed is None or (role != "outsider" and role in allowed)


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(RULES))
def test_matrix__every_role_on_endpoint__allowed_403_or_404(client: Any, make_user: Callable[..., Any],
                                                           name: str) -> None:
    """One world per endpoint; the refused roles go first, so an allowed role's change (a
    deletion, say) cannot turn a later 403 into a 404."""
    world = _world(make_user)
    for role in sorted([*ROLES, "outsider"], key=lambda r: _allowed(name, r)):
        user = world["outsider"] if role == "outsider" else world["users"][role]
        client.force_login(user)
        before = AuditEvent.objects.exclude(action__startswith="auth.").count()

        # Another project's objects: never reachable, and their existence does not leak
        if name not in GLOBAL:
            response = _call(client, name, world["theirs"])
            assert response.status_code == 404, f"{name} as {role} on another project: {response.status_code}"
            assert AuditEvent.objects.exclude(action__startswith="auth.").count() == before

        # Own project
        response = _call(client, name, world["mine"])
        if _allowed(name, role):
            assert response.status_code not in (403, 404) and response.status_code < 500, \
                f"{name} as {role}: {response.status_code}"
            continue
        expected = 404 if role == "outsider" and name not in GLOBAL else 403
        assert response.status_code == expected, f"{name} as {role}: {response.status_code}"
        assert AuditEvent.objects.exclude(action__startswith="auth.").count() == before, \
            f"{name} as {role}: a refused request wrote"
        if expected == 403:
            htmx = _call(client, name, world["mine"], htmx=True)
            assert htmx.status_code == 403 and htmx["HX-Retarget"] == "#messages", f"{name} as {role} (htmx)"
            assert b"<html" not in htmx.content and b"login" not in htmx.content.lower()


@pytest.mark.django_db
def test_flag_owner_without_editor_role__may_edit_own_flag_only(client: Any, make_user: Callable[..., Any]) -> None:
    project = make_project("owned")
    owner = make_user("flag_owner")
    services.membership_grant(project=project, user=owner, role=Role.VIEWER, actor=TEST_ACTOR)
    mine = make_string_flag(project, key="mine", owner_user=owner)
    other = make_string_flag(project, key="other")
    client.force_login(owner)
    url = "/p/owned/flags/{}/variations/write/edit/"
    assert client.post(url.format(mine.key), {"value": "write", "risk_rank": "4", "name": "W"}).status_code == 302
    assert client.post(url.format(other.key), {"value": "write", "risk_rank": "4", "name": "W"}).status_code == 403
    # Handing the flag to someone else takes the right away.
    services.flag_update(flag=mine, actor=TEST_ACTOR, owner_user=make_user("next_owner"))
    assert client.post(url.format(mine.key), {"value": "write", "risk_rank": "3", "name": "W"}).status_code == 403


@pytest.mark.django_db
def test_superuser_without_roles__no_console_powers(client: Any, django_user_model: Any) -> None:
    seed_demo()
    root = django_user_model.objects.create_superuser("root", password="x")
    client.force_login(root)
    assert client.get("/p/support-assistant/").status_code == 404
    assert client.get("/audit/").status_code == 403
    assert client.get("/admin/").status_code == 200  # the site admin is theirs


@pytest.mark.django_db
def test_idor__other_projects_ids_in_form_fields__refused(client: Any, make_user: Callable[..., Any]) -> None:
    world = _world(make_user)
    admin, editor = world["users"][Role.ADMIN], world["users"][Role.EDITOR]
    theirs = world["theirs"]
    # An admin revoking a role held in another project, by posting that user's id
    client.force_login(admin)
    response = client.post("/p/mine/members/revoke/", {"user": theirs["viewer"].pk, "role": "viewer"})
    assert response.status_code == 404
    assert Membership.objects.filter(project=theirs["project"], user=theirs["viewer"]).exists()
    # An admin creating a key for another project's environment
    their_env = Environment.objects.get(project=theirs["project"], key="production")
    response = client.post("/p/mine/sdk-keys/", {"environment": their_env.pk, "name": "sneaky"})
    assert response.status_code == 422 and not SdkKey.objects.filter(name="sneaky").exists()
    # An editor naming a non-member as a flag's owner
    client.force_login(editor)
    data = {"name": "x", "behavior_surface": "agent_tools", "lifetime": "release", "fallback_variation": "none",
            "version": "1", "owner_user": theirs["viewer"].pk}
    response = client.post("/p/mine/flags/tool_mode/edit/", data)
    assert response.status_code == 422
    assert Flag.objects.get(project=world["mine"]["project"], key="tool_mode").owner_user_id is None
    # An editor targeting another project's segment by key
    response = client.post("/p/mine/flags/tool_mode/targeting/development/", {
        "assignment_unit": "accountId", "default_variation": "none", "version": "1",
        "rules": '[{"clauses": [{"op": "in_segment", "values": ["their_only"]}], "serve": {"variation": "write"}}]'})
    assert response.status_code == 422
    assert Project.objects.get(key="theirs").segments.filter(key="matrix").exists()
