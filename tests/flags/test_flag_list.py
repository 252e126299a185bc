"""The project list and a project's flag list: who sees which project, filters (full page, htmx
partial, history restore), the empty state, odd query strings, and a query count that does not
grow with the flags."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from flags.constants import BehaviorSurface, LifecycleStage
from flags.models import Project
from tests.flags.support import (
    HTMX,
    INCIDENT,
    PROFILE,
    PROJECT,
    TOOL_MODE,
    console_url,
    string_flag,
)

# --- login and projects ----------------------------------------------------------------------


@pytest.mark.django_db
def test_project_list__anonymous__redirects_to_login(client: Any, demo: Project) -> None:
    # Given nobody is logged in
    # When the project list is requested
    response = client.get(reverse("flags:project_list"))
    # Then the login page is asked for, coming back to the list afterwards
    assert response.status_code == 302
    assert response.url.startswith("/login/")
    assert "next=/" in response.url


@pytest.mark.django_db
def test_project_list__user_with_one_membership__lists_only_that_project(
    client: Any, login: Callable[[str], Any], other_project: Project
) -> None:
    # Given the owner is a member of the demo project only
    login("owner")
    # When the owner opens the project list
    response = client.get(reverse("flags:project_list"))
    # Then only the demo project is listed, with a link to its flags
    assert response.status_code == 200
    assert [p.key for p in response.context["projects"]] == [PROJECT]
    content = response.content.decode()
    assert console_url("flag_list") in content
    assert console_url("flag_list", project_key=other_project.key) not in content
    assert other_project.name not in content


@pytest.mark.django_db
def test_flag_list__non_member__answers_404(client: Any, login: Callable[[str], Any], other_project: Project) -> None:
    # Given the owner holds no role in the other project
    login("owner")
    # When the owner opens that project's flag list directly
    response = client.get(console_url("flag_list", project_key=other_project.key))
    # Then the project does not exist for them
    assert response.status_code == 404


# --- flag list -------------------------------------------------------------------------------


def _listed_keys(response: Any) -> list[str]:
    """The flags a list response shows, read from the rendered links (htmx partials carry no context)."""
    keys = re.findall(rf'<a href="/p/{PROJECT}/flags/([^/"]+)/"><strong>', response.content.decode())
    if response.context is not None:
        assert keys == [flag.key for flag in response.context["flags"]]
    return keys


@pytest.mark.django_db
def test_flag_list__no_filter__lists_every_flag_of_the_project_as_a_full_page(
    client: Any, login: Callable[[str], Any], other_project: Project
) -> None:
    # Given the demo project has three flags and another project has one
    login("owner")
    # When the flag list is opened without filters
    response = client.get(console_url("flag_list"))
    # Then the full page lists the three demo flags, sorted by key, and not the other project's flag
    assert response.status_code == 200
    assert _listed_keys(response) == sorted([PROFILE, TOOL_MODE, INCIDENT])
    content = response.content.decode()
    assert "<html" in content
    assert 'role="search"' in content
    assert "secret_rollout" not in content


@pytest.mark.django_db
def test_flag_list__htmx_request__returns_only_the_table_partial(client: Any, login: Callable[[str], Any]) -> None:
    # Given a logged-in member
    login("owner")
    # When the filter form asks for the list through htmx
    response = client.get(console_url("flag_list"), {"surface": BehaviorSurface.AGENT_TOOLS}, headers=HTMX)
    # Then only the table fragment comes back: no page, no filter form
    assert response.status_code == 200
    content = response.content.decode()
    assert "<html" not in content
    assert 'role="search"' not in content
    assert content.strip().startswith('<div id="flag-table">')
    assert console_url("flag_detail", flag_key=TOOL_MODE) in content
    assert console_url("flag_detail", flag_key=PROFILE) not in content


@pytest.mark.django_db
def test_flag_list__htmx_history_restore__returns_the_full_page(client: Any, login: Callable[[str], Any]) -> None:
    # Given a logged-in member who filtered the list through htmx, then pressed Back after a cache miss
    login("owner")
    # When htmx asks for the page to restore history
    response = client.get(console_url("flag_list"), {"tag": "incident"},
                          headers={**HTMX, "HX-History-Restore-Request": "true"})
    # Then the whole page comes back, still filtered, and caches are told the answer varies with HX-Request
    assert response.status_code == 200
    content = response.content.decode()
    assert "<html" in content and 'role="search"' in content
    assert _listed_keys(response) == [INCIDENT]
    assert "HX-Request" in response["Vary"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"surface": BehaviorSurface.AGENT_TOOLS}, [TOOL_MODE]),
        ({"surface": BehaviorSurface.AI_PROFILE}, [PROFILE]),
        ({"tag": "incident"}, [INCIDENT]),
        ({"tag": "support"}, sorted([PROFILE, TOOL_MODE, INCIDENT])),
        ({"owner": "team:support-operations"}, [INCIDENT]),
        # the profile flag is temporary and its review date is three days past: cleanup due
        ({"stage": LifecycleStage.CLEANUP_DUE}, [PROFILE]),
        ({"q": "tool_mode"}, [TOOL_MODE]),  # by key
        ({"q": "INCIDENT Fallback"}, [INCIDENT]),  # by name, case-insensitively (the key has underscores)
        ({"surface": BehaviorSurface.FALLBACK_MODE, "tag": "agent"}, []),  # filters combine
    ],
    ids=["surface-tools", "surface-profile", "tag-incident", "tag-support", "owner-team", "stage", "q-key",
         "q-name", "combined"],
)
def test_flag_list__filter__lists_only_matching_flags(
    client: Any, login: Callable[[str], Any], params: dict[str, str], expected: list[str]
) -> None:
    # Given the demo catalog
    login("owner")
    # When the list is filtered
    response = client.get(console_url("flag_list"), params)
    # Then exactly the matching flags are listed
    assert response.status_code == 200
    assert _listed_keys(response) == expected
    content = response.content.decode()
    for key in {PROFILE, TOOL_MODE, INCIDENT} - set(expected):
        assert console_url("flag_detail", flag_key=key) not in content


@pytest.mark.django_db
def test_flag_list__owner_user_filter__lists_flags_owned_by_that_person(
    client: Any, login: Callable[[str], Any], demo: Project, django_user_model: Any
) -> None:
    # Given a draft flag owned by the admin, beside the demo flags owned by the owner
    admin = django_user_model.objects.get(username="admin")
    owner = login("owner")
    string_flag(demo, "admin_owned_rollout", owner_user=admin)
    # When the list is filtered by each person
    by_admin = client.get(console_url("flag_list"), {"owner": f"user:{admin.pk}"})
    by_owner = client.get(console_url("flag_list"), {"owner": f"user:{owner.pk}"})
    drafts = client.get(console_url("flag_list"), {"stage": LifecycleStage.DRAFT})
    # Then each lists only that person's flags, and the new flag is the only draft
    assert _listed_keys(by_admin) == ["admin_owned_rollout"]
    assert _listed_keys(by_owner) == sorted([PROFILE, TOOL_MODE, INCIDENT])
    assert _listed_keys(drafts) == ["admin_owned_rollout"]
    # and both people are offered as owner choices
    owner_values = [value for value, _label in by_admin.context["owners"]]
    assert f"user:{admin.pk}" in owner_values
    assert f"user:{owner.pk}" in owner_values


@pytest.mark.django_db
@pytest.mark.parametrize("params", [{"q": "no-such-flag-anywhere"}, {"owner": "nonsense"}, {"tag": "no-such-tag"}])
def test_flag_list__filter_matching_nothing__shows_no_match_empty_state(
    client: Any, login: Callable[[str], Any], params: dict[str, str]
) -> None:
    # Given the demo catalog
    login("owner")
    # When the filter matches no flag (full page and htmx partial alike)
    page = client.get(console_url("flag_list"), params)
    partial = client.get(console_url("flag_list"), params, headers=HTMX)
    # Then the empty state says no flag matches and offers to clear the filters
    for response in (page, partial):
        assert response.status_code == 200
        assert _listed_keys(response) == []
        content = response.content.decode()
        assert "No flag matches" in content
        assert f'href="{console_url("flag_list")}">Clear filters' in content
        assert "<table" not in content


@pytest.mark.django_db
def test_flag_list__more_flags__does_not_issue_more_queries(
    client: Any, login: Callable[[str], Any], demo: Project, django_user_model: Any
) -> None:
    # Given the demo project with its 3 flags (owned, tagged, targeted in 3 environments)
    admin = django_user_model.objects.get(username="admin")
    login("owner")
    with CaptureQueriesContext(connection) as with_3:
        response = client.get(console_url("flag_list"))
    assert len(response.context["flags"]) == 3
    # When 7 more flags with owners, teams and tags are added
    for index in range(7):
        string_flag(demo, f"extra_flag_{index}", owner_user=admin, owner_team=f"team-{index}",
                     tags=[f"tag-{index}", "extra"])
    with CaptureQueriesContext(connection) as with_10:
        response = client.get(console_url("flag_list"))
    # Then the list of 10 flags costs the same number of queries as the list of 3
    assert len(response.context["flags"]) == 10
    assert len(with_10.captured_queries) == len(with_3.captured_queries)


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["?q=%00", "?surface=%00", "?tag=%00", "?owner=user:%C2%B2"])
def test_flag_list__odd_query_strings__200(client, demo, login, query: str) -> None:
    login("owner")
    assert client.get(f"/p/{demo.key}/" + query).status_code == 200

