"""Who may change the catalog from its pages: the auditor is refused every write (403, or a
message for htmx), even when named a flag's owner; roles without editing rights cannot create
flags; a named owner may edit their own flag; another project's objects do not exist for
those who are not its members."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from audit.constants import AuditAction
from flags import services
from flags.constants import Role
from flags.models import Flag, Project
from tests.factories import TEST_ACTOR
from tests.flags.support import (
    HTMX,
    TOOL_MODE,
    audit_events_since,
    audit_mark,
    catalog_state,
    console_url,
    demo_flag,
    demo_targeting,
    flag_create_data,
    flag_edit_data,
    string_flag,
    targeting_data,
)


def _auditor_posts() -> list[Any]:
    """(url, data) builders for every catalog write the auditor must be refused."""
    return [
        pytest.param(lambda: (console_url("flag_create"), flag_create_data()), id="flag-create"),
        pytest.param(lambda: (console_url("flag_edit", flag_key=TOOL_MODE), flag_edit_data(demo_flag(TOOL_MODE), name="X")),
                     id="flag-edit"),
        pytest.param(lambda: (console_url("variation_edit", flag_key=TOOL_MODE, variation_key="write"),
                              {"name": "Write", "value": "write_all", "risk_rank": "4"}), id="variation-edit"),
        pytest.param(lambda: (console_url("variation_create", flag_key=TOOL_MODE),
                              {"key": "extra", "value": "extra", "risk_rank": "0"}), id="variation-create"),
        pytest.param(lambda: (console_url("variation_delete", flag_key=TOOL_MODE, variation_key="write"), {}),
                     id="variation-delete"),
        pytest.param(lambda: (console_url("targeting_edit", flag_key=TOOL_MODE, environment_key="development"),
                              targeting_data(demo_targeting(TOOL_MODE, "development"), enabled=False)),
                     id="targeting-edit-development"),
        pytest.param(lambda: (console_url("targeting_toggle", flag_key=TOOL_MODE, environment_key="development"), {}),
                     id="targeting-toggle-development"),
        pytest.param(lambda: (console_url("rollouts:segment_create"), {"key": "new_segment", "name": "New"}), id="segment-create"),
        pytest.param(lambda: (console_url("rollouts:segment_edit", segment_key="beta_accounts"), {"name": "Renamed"}),
                     id="segment-edit"),
        pytest.param(lambda: (console_url("segment_delete", segment_key="beta_accounts"), {}), id="segment-delete"),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("request_builder", _auditor_posts())
def test_catalog_write__auditor__answers_403_and_changes_nothing(
    client: Any, login: Callable[[str], Any], request_builder: Callable[[], tuple[str, dict]]
) -> None:
    # Given the auditor, a read-only role in the project
    login("auditor")
    url, data = request_builder()
    before = catalog_state()
    # When the auditor posts a change
    response = client.post(url, data)
    # Then it is refused with the "not allowed" page and nothing changed
    assert response.status_code == 403
    assert "Not allowed" in response.content.decode()
    assert catalog_state() == before


@pytest.mark.django_db
@pytest.mark.parametrize("request_builder", _auditor_posts())
def test_catalog_write__auditor_via_htmx__answers_403_retargeted_to_messages(
    client: Any, login: Callable[[str], Any], request_builder: Callable[[], tuple[str, dict]]
) -> None:
    # Given the auditor
    login("auditor")
    url, data = request_builder()
    before = catalog_state()
    # When the auditor posts a change through htmx
    response = client.post(url, data, headers=HTMX)
    # Then the refusal is a fragment swapped into the message area
    assert response.status_code == 403
    assert response["HX-Retarget"] == "#messages"
    assert response["HX-Reswap"] == "innerHTML"
    content = response.content.decode()
    assert "<html" not in content
    assert 'class="message denied"' in content
    assert catalog_state() == before


@pytest.mark.django_db
def test_auditor_named_flag_owner__still_changes_nothing(client, demo, login) -> None:
    auditor = get_user_model().objects.get(username="auditor")
    flag = Flag.objects.get(project=demo, key="support_agent_tool_mode")
    services.flag_update(flag=flag, actor=TEST_ACTOR, owner_user=auditor)
    login("auditor")
    response = client.post(f"/p/{demo.key}/flags/{flag.key}/targeting/development/toggle/", {"version": "2"})
    assert response.status_code == 403
    # and the editor's form does not offer auditors as owners
    login("owner")
    form = client.get(f"/p/{demo.key}/flags/{flag.key}/edit/").context["form"]
    assert auditor not in form.fields["owner_user"].queryset


@pytest.mark.django_db
@pytest.mark.parametrize("username", ["auditor", "pm", "operator"])
def test_flag_create__role_without_editing_rights__answers_403(
    client: Any, login: Callable[[str], Any], username: str
) -> None:
    # Given a member who is neither editor nor admin
    login(username)
    before = catalog_state()
    # When they open the form or post a flag
    opened = client.get(console_url("flag_create"))
    posted = client.post(console_url("flag_create"), flag_create_data())
    # Then both are refused, and nothing is created
    assert opened.status_code == 403
    assert posted.status_code == 403
    assert "flag owner or editor role" in posted.content.decode()
    assert catalog_state() == before


@pytest.mark.django_db
def test_flag_edit__owner_user_without_editor_role__may_edit_own_flag(
    client: Any, login: Callable[[str], Any], demo: Project, django_user_model: Any
) -> None:
    # Given the pm (approver, viewer) is the named owner of one flag
    pm = django_user_model.objects.get(username="pm")
    string_flag(demo, "pm_owned_rollout", owner_user=pm)
    login("pm")
    mark = audit_mark()
    # When the pm edits that flag, and tries to edit another
    own = client.post(console_url("flag_edit", flag_key="pm_owned_rollout"),
                      flag_edit_data(demo_flag("pm_owned_rollout"), name="Renamed by pm"))
    other = client.post(console_url("flag_edit", flag_key=TOOL_MODE), flag_edit_data(demo_flag(TOOL_MODE), name="Nope"))
    # Then only their own flag may be changed
    assert own.status_code == 302
    assert demo_flag("pm_owned_rollout").name == "Renamed by pm"
    assert other.status_code == 403
    assert demo_flag(TOOL_MODE).name != "Nope"
    assert [(e.action, e.actor) for e in audit_events_since(mark)] == [(AuditAction.FLAG_UPDATED, pm)]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "url_builder"),
    [
        ("get", lambda other: console_url("flag_detail", flag_key="secret_rollout")),
        ("post", lambda other: console_url("flag_edit", flag_key="secret_rollout")),
        ("get", lambda other: console_url("variation_edit", flag_key="secret_rollout", variation_key="safe")),
        ("post", lambda other: console_url("targeting_toggle", flag_key="secret_rollout", environment_key="development")),
        ("get", lambda other: console_url("rollouts:segment_edit", segment_key="secret_segment")),
        ("post", lambda other: console_url("segment_delete", segment_key="secret_segment")),
        ("get", lambda other: console_url("flag_detail", project_key=other.key, flag_key="secret_rollout")),
        ("post", lambda other: console_url("flag_create", project_key=other.key)),
        ("get", lambda other: console_url("segment_list", project_key=other.key)),
        # a variation key of another flag of the same project
        ("get", lambda other: console_url("variation_edit", flag_key=TOOL_MODE, variation_key="baseline_v3")),
    ],
    ids=["flag-detail-via-own-project", "flag-edit-via-own-project", "variation-via-own-project",
         "toggle-via-own-project", "segment-via-own-project", "segment-delete-via-own-project",
         "flag-detail-in-other-project", "flag-create-in-other-project", "segments-of-other-project",
         "variation-of-another-flag"],
)
def test_object_of_another_project__member_of_demo_only__answers_404(
    client: Any, login: Callable[[str], Any], other_project: Project, method: str,
    url_builder: Callable[[Project], str],
) -> None:
    # Given the admin (editor and project admin of the demo project, site superuser) holds no role
    # in the other project, whose flag and segment keys exist nowhere else
    login("admin")
    before = catalog_state()
    # When the admin reaches for those objects, through either project's URLs
    url = url_builder(other_project)
    response = client.get(url) if method == "get" else client.post(url, {"name": "Taken over"})
    # Then they do not exist for the admin, and nothing changed
    assert response.status_code == 404
    assert catalog_state() == before


@pytest.mark.django_db
def test_flag_detail__member_granted_role__can_open_other_project(
    client: Any, login: Callable[[str], Any], other_project: Project
) -> None:
    # Given the owner is granted the viewer role in the other project
    owner = login("owner")
    services.membership_grant(project=other_project, user=owner, role=Role.VIEWER, actor=TEST_ACTOR)
    # When the owner opens its flag
    response = client.get(console_url("flag_detail", project_key=other_project.key, flag_key="secret_rollout"))
    # Then the flag is shown (membership, not guessing, is what opens it)
    assert response.status_code == 200
    assert response.context["flag"].project == other_project

