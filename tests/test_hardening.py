"""Regression tests for defects found in review: inputs that once produced a 500, a throttle
bypass, a false broken chain, cross-project writes and a start-up race."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction

from audit.context import audit_context
from audit.models import AuditEvent
from audit.services import SystemActor, record
from audit.verify import verify_chain
from flags import services
from flags.demo import seed_demo
from flags.evaluation.targeting_schema import validate_clause
from flags.models import Environment, Flag
from flags.snapshot_builder import build_environment_snapshot
from flags.snapshot_store import SnapshotStore, reset_store
from tests.factories import TEST_ACTOR, make_project

pytestmark = pytest.mark.django_db
PROFILE = "support_assistant_profile"


def _login(client: Any, username: str) -> Any:
    user = get_user_model().objects.get(username=username)
    client.force_login(user)
    return user


def test_auditor_named_flag_owner__still_changes_nothing(client, demo) -> None:
    auditor = get_user_model().objects.get(username="auditor")
    flag = Flag.objects.get(project=demo, key="support_agent_tool_mode")
    services.flag_update(flag=flag, actor=TEST_ACTOR, owner_user=auditor)
    _login(client, "auditor")
    response = client.post(f"/p/{demo.key}/flags/{flag.key}/targeting/development/toggle/", {"version": "2"})
    assert response.status_code == 403
    # and the editor's form does not offer auditors as owners
    _login(client, "owner")
    form = client.get(f"/p/{demo.key}/flags/{flag.key}/edit/").context["form"]
    assert auditor not in form.fields["owner_user"].queryset


def test_throttle__compatibility_spelling_of_the_name__shares_the_counter(client, demo, settings) -> None:
    settings.LOGIN_FAILURES_PER_ACCOUNT = 2
    settings.LOGIN_DELAY_BASE_SECONDS = 60  # the first wait outlasts the test, however slow the machine
    cache.clear()
    for _ in range(2):
        client.post("/login/", {"username": "owner", "password": "wrong"})
    response = client.post("/login/", {"username": "\uff4fwner", "password": "featureops-demo"})  # fullwidth o
    assert "Too many failed sign-ins" in response.content.decode()
    assert "_auth_user_id" not in client.session
    cache.clear()


def test_export__project_id_outside_scope__not_written_into_that_project(client, demo) -> None:
    other = make_project("other")
    _login(client, "auditor")
    response = client.get(f"/audit/export.csv?project={other.pk}")
    b"".join(response.streaming_content)
    export = AuditEvent.objects.get(action="audit.exported")
    assert export.project_id is None


@pytest.mark.parametrize("address", ["::ffff:192.0.2.1", "2001:0db8:0000::0001", "192.0.2.7"])
def test_chain__client_addresses__verify_intact(address: str) -> None:
    project = make_project()
    with audit_context(request_ip=address), transaction.atomic():
        record(actor=SystemActor("t"), action="flag.updated", target=project, project=project)
    report = verify_chain()
    assert report.ok, report.problem


@pytest.mark.parametrize("text", ['{"prompt": "\\ud800", "temperature": 0.2}', '{"prompt": "a\\u0000b", "temperature": 0.2}',
                                  "[" * 50_000, "[" + "1" * 5000 + "]"])
def test_variation_value__pathological_json__422_not_500(client, demo, text: str) -> None:
    _login(client, "owner")
    response = client.post(f"/p/{demo.key}/flags/{PROFILE}/variations/new/", {"key": "odd", "value": text,
                                                                            "risk_rank": "0"})
    assert response.status_code == 422
    assert not Flag.objects.get(project=demo, key=PROFILE).variations.filter(key="odd").exists()


@pytest.mark.parametrize("clause", [
    {"attribute": "v", "op": "matches", "values": ["a{4294967296}"]},
    {"attribute": "v", "op": "semver_gt", "values": ["1" * 5000]},
    {"attribute": "v", "op": "matches", "values": ["(" * 5000 + ")" * 5000]},
])
def test_clause__pathological_values__refused_not_raised(clause: dict) -> None:
    assert validate_clause(clause)


@pytest.mark.parametrize("query", ["?before=%C2%B2", "?project=%C2%B2", "?actor=%C2%B2", "?to=9999-12-31",
                                   "?from=2026-13-45", "?q=%00", "?before=99999999999999999999999"])
def test_explorer__odd_query_strings__200(client, demo, query: str) -> None:
    _login(client, "auditor")
    assert client.get("/audit/" + query).status_code == 200
    assert client.get(f"/p/{demo.key}/flags/{PROFILE}/history/" + query).status_code == 200


@pytest.mark.parametrize("query", ["?q=%00", "?surface=%00", "?tag=%00", "?owner=user:%C2%B2"])
def test_flag_list__odd_query_strings__200(client, demo, query: str) -> None:
    _login(client, "owner")
    assert client.get(f"/p/{demo.key}/" + query).status_code == 200


def test_members_revoke__unicode_digit_id__404(client, demo) -> None:
    _login(client, "admin")
    assert client.post(f"/p/{demo.key}/members/revoke/", {"user": "²", "role": "viewer"}).status_code == 404


def test_failed_login__long_username__recorded_not_500(client, demo) -> None:
    response = client.post("/login/", {"username": "x" * 150, "password": "nope"})
    assert response.status_code == 200
    assert AuditEvent.objects.filter(action="auth.login_failed").exists()


def test_toggle__missing_version__refused_as_stale(client, demo) -> None:
    _login(client, "owner")
    response = client.post(f"/p/{demo.key}/flags/support_ai_incident_fallback/targeting/staging/toggle/", {},
                           headers={"HX-Request": "true"})
    assert response.status_code == 409 and "out of date" in response.content.decode()
    assert not Flag.objects.get(project=demo, key="support_ai_incident_fallback").targetings.get(
        environment__key="staging").enabled


@pytest.mark.django_db(transaction=True)
def test_store__requests_during_first_load__wait_instead_of_refusing_valid_keys() -> None:
    seed_demo()
    environment = Environment.objects.get(project__key="support-assistant", key="production")
    _, raw_key = services.sdk_key_create(environment=environment, name="race", actor=TEST_ACTOR)

    def slow_build(environment_id: int) -> dict:
        time.sleep(0.3)
        return build_environment_snapshot(environment_id)

    store = reset_store(SnapshotStore(poll_seconds=0, build=slow_build))
    from flags.services.sdk_keys import hash_sdk_key

    results: list[str] = []

    def lookup() -> None:
        try:
            results.append(store.lookup(hash_sdk_key(raw_key)).status)
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=lookup) for _ in range(4)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join(timeout=30)
    reset_store(None)
    assert results == ["ok"] * 4
