"""The System status page (issue 15, item 2's "worker last seen"): who may see it, each queue
with its live, stale and stopped workers, its htmx refresh and query count, and the
navigation's warning of a queue without a live worker."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from featureops_site.queues import QUEUES
from featureops_site.services import task_failure_record
from flags import services
from flags.constants import Role
from tests.factories import TEST_ACTOR, make_project
from tests.site.operability.support import every_queue_live, heartbeat


@pytest.fixture
def people(db: None, make_user: Any, django_user_model: Any) -> dict[str, Any]:
    project = make_project(key="ops-demo")
    other = make_project(key="ops-other")
    users = {
        "staff": make_user("ops-staff", is_staff=True),
        "root": django_user_model.objects.create_superuser("ops-root", "root@example.com", "pw-for-tests-1"),
        "admin": make_user("ops-admin"),
        "operator": make_user("ops-operator"),
        "viewer": make_user("ops-viewer"),
        "nobody": make_user("ops-nobody"),
    }
    services.membership_grant(project=project, user=users["admin"], role=Role.ADMIN, actor=TEST_ACTOR)
    services.membership_grant(project=project, user=users["operator"], role=Role.OPERATOR, actor=TEST_ACTOR)
    services.membership_grant(project=other, user=users["viewer"], role=Role.VIEWER, actor=TEST_ACTOR)
    return users


def test_status_page__who_may_see_it__staff_superusers_project_admins(client: Any, people: dict[str, Any]) -> None:
    # Anonymous visitors are sent to sign in
    response = client.get("/system/")
    assert response.status_code == 302 and "/login/" in response["Location"]
    # Site staff, superusers and project admins see it
    for name in ("staff", "root", "admin"):
        client.force_login(people[name])
        assert client.get("/system/").status_code == 200, name
    # Everyone else is refused, with the console's 403 page
    for name in ("operator", "viewer", "nobody"):
        client.force_login(people[name])
        response = client.get("/system/")
        assert response.status_code == 403, name
        assert b"System status is for site staff and project admins." in response.content
    assert client.post("/system/").status_code == 405


def test_status_page__no_worker_yet__empty_state_with_the_command(client: Any, people: dict[str, Any],
                                                                  settings: Any) -> None:
    settings.CELERY_QUEUE_PREFIX = "staging."
    client.force_login(people["admin"])
    page = client.get("/system/").content.decode()
    assert "No worker has reported yet" in page
    for queue in ("safety", "telemetry", "notifications", "reminders"):
        assert f"celery -A featureops_site worker --queues=staging.{queue}" in page


def test_status_page__live_stale_and_stopped_workers__each_queue_with_its_workers(
        client: Any, people: dict[str, Any], settings: Any) -> None:
    # Given a live worker on three queues, a stale one on safety and a stopped one on safety
    settings.WORKER_STALE_SECONDS = 45
    heartbeat("main@host-a", ["telemetry", "notifications", "reminders"], seconds_ago=12)
    heartbeat("safety@host-b", ["safety"], seconds_ago=600)
    heartbeat("spare@host-c", ["safety"], stopped=True)
    task_failure_record(task_name="telemetry.tasks.aggregate_events", error="OperationalError")
    client.force_login(people["staff"])
    page = client.get("/system/").content.decode()
    # Then safety is flagged as having no live worker, with both of its workers listed
    assert "No live worker for: <strong>safety</strong>" in page
    # with the command that starts one for that queue alone
    assert "<code>celery -A featureops_site worker --queues=safety</code>." in page
    assert "--queues=telemetry" not in page
    safety_row = page.split('data-testid="queue-safety"')[1].split("</tr>")[0]
    assert "safety@host-b" in safety_row and "spare@host-c" in safety_row and "no live worker" in safety_row
    telemetry_row = page.split('data-testid="queue-telemetry"')[1].split("</tr>")[0]
    assert "main@host-a" in telemetry_row and "1 live" in telemetry_row
    # and each worker's last heartbeat, red when stale
    assert 'data-state="live"' in page and 'data-state="stale"' in page and 'data-state="stopped"' in page
    stale_row = page.split('data-state="stale"')[1].split("</tr>")[0]
    assert 'class="badge bad" data-testid="last-seen">10 min ago' in stale_row
    live_row = page.split('data-state="live"')[1].split("</tr>")[0]
    assert re.search(r'class="badge on" data-testid="last-seen">1[23] s ago', live_row)
    # and the task failures
    assert "telemetry.tasks.aggregate_events" in page and "OperationalError" in page


def test_status_page__htmx_refresh__only_the_status_fragment(client: Any, people: dict[str, Any]) -> None:
    every_queue_live()
    client.force_login(people["admin"])
    response = client.get("/system/", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert b'id="system-status"' in response.content and b"<html" not in response.content
    assert b'hx-trigger="every 10s"' in response.content


def test_status_page__queries__do_not_grow_with_workers(client: Any, people: dict[str, Any],
                                                       django_assert_max_num_queries: Any) -> None:
    client.force_login(people["admin"])
    heartbeat("w0@host", list(QUEUES))
    with CaptureQueriesContext(connection) as few:
        assert client.get("/system/").status_code == 200
    for n in range(1, 25):
        heartbeat(f"w{n}@host", [list(QUEUES)[n % 4]], seconds_ago=n * 10)
        task_failure_record(task_name=f"tasks.t{n}", error="E")
    with CaptureQueriesContext(connection) as many:
        assert client.get("/system/").status_code == 200
    assert len(many) == len(few)
    with django_assert_max_num_queries(12):
        client.get("/system/")


def test_navigation__queue_without_live_worker__admins_warned_others_not(client: Any, people: dict[str, Any]) -> None:
    # Given every queue but safety has a live worker
    heartbeat("main@host-a", ["telemetry", "notifications", "reminders"])
    # Then a project admin sees the warning on any page, linking to the status page
    client.force_login(people["admin"])
    page = client.get("/").content.decode()
    assert 'id="nav-system-status" href="/system/"' in page
    assert 'data-testid="nav-worker-warning" title="No live worker for: safety">1 queue without a worker' in page
    # and people who may not see the status page see neither link nor warning
    for name in ("operator", "viewer"):
        client.force_login(people[name])
        assert "nav-system-status" not in client.get("/").content.decode(), name
    # When safety's worker reports, the warning goes, the link stays
    heartbeat("safety@host-b", ["safety"])
    client.force_login(people["staff"])
    page = client.get("/").content.decode()
    assert "nav-system-status" in page and "nav-worker-warning" not in page
