"""Flag-wide edits of a flag served in a governed environment (rollouts/flag_change_views.py): the
flag page sends them to the governed editors, where a new served value, fallback or risk rank
becomes a change request and the rest saves at once; the catalog's own editors refuse them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flags.models import Variation
from rollouts.models import ChangeRequest
from tests.flags.support import HTMX
from tests.rollouts.support import FLAG_PAGE as FLAG
from tests.rollouts.support import PROFILE_PAGE as PROFILE
from tests.rollouts.support import as_user, escalate, user

pytestmark = pytest.mark.django_db


def test_flag_page__served_variation_edit_goes_through_the_governed_editor(client, demo) -> None:
    page = as_user(client, "owner").get(PROFILE).content.decode()
    assert f"{PROFILE}variations/citation_first_v4/change/" in page
    assert f"{PROFILE}change-contract/" in page and f"{PROFILE}edit/" not in page


def test_variation_change__new_served_value_becomes_a_request(client, demo) -> None:
    from flags.models import Variation

    v4 = Variation.objects.get(flag__key="support_assistant_profile", key="citation_first_v4")
    value = {**v4.value, "temperature": 0.3}
    url = f"{PROFILE}variations/citation_first_v4/change/"
    form = as_user(client, "owner").get(url, headers=HTMX).content.decode()
    assert "a new value waits for approval" in form and 'name="reason"' in form
    missing = client.post(url, {"value": json.dumps(value), "risk_rank": "1", "name": "v4"}, headers=HTMX)
    assert missing.status_code == 422 and "Say why" in missing.content.decode()
    done = client.post(url, {"value": json.dumps(value), "risk_rank": "1", "name": "v4", "reason": "warmer"},
                       headers=HTMX)
    change_request = ChangeRequest.objects.get()
    assert done["HX-Redirect"] == f"/p/support-assistant/changes/{change_request.pk}/"
    v4.refresh_from_db()
    assert v4.value["temperature"] == 0.2 and v4.name == "v4"
    page = client.get(done["HX-Redirect"]).content.decode()
    assert "Value of citation_first_v4 (served in Production): temperature 0.2 → 0.3" in page
    assert "every environment" in page


def test_flags_editors__refuse_a_forged_governed_value_or_fallback_change(client, demo) -> None:
    from flags.models import Flag, Variation

    as_user(client, "owner")
    v4 = Variation.objects.get(flag__key="support_assistant_profile", key="citation_first_v4")
    forged = client.post(f"{PROFILE}variations/citation_first_v4/edit/",
                         {"value": json.dumps({**v4.value, "temperature": 0.9}), "risk_rank": "1", "name": "x"})
    assert forged.status_code == 403 and "needs approval" in forged.content.decode()
    flag = Flag.objects.get(key="support_assistant_profile")
    data = {"name": flag.name, "behavior_surface": flag.behavior_surface, "lifetime": flag.lifetime,
            "fallback_variation": "citation_first_v4", "version": str(flag.version),
            "json_schema": json.dumps(flag.json_schema)}
    assert client.post(f"{PROFILE}edit/", data).status_code == 403
    v4.refresh_from_db()
    flag.refresh_from_db()
    assert v4.value["temperature"] == 0.2 and flag.fallback_variation.key == "baseline_v3"


def test_contract_change__fallback_held_rest_saved(client, demo) -> None:
    from flags.models import Flag

    flag = Flag.objects.get(key="support_assistant_profile")
    data = {"name": "Support profile", "behavior_surface": flag.behavior_surface, "lifetime": flag.lifetime,
            "fallback_variation": "fallback_human_review", "version": str(flag.version),
            "json_schema": json.dumps(flag.json_schema), "reason": "safer fallback during the trial",
            "review_date": flag.review_date.isoformat(), "owner_team": flag.owner_team}
    response = as_user(client, "owner").post(f"{PROFILE}change-contract/", data)
    change_request = ChangeRequest.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/changes/{change_request.pk}/")
    flag.refresh_from_db()
    assert flag.name == "Support profile" and flag.fallback_variation.key == "baseline_v3"
    assert change_request.proposed == {"fallback_variation": "fallback_human_review"}


def test_lowering_a_risk_rank__is_a_flag_wide_request_not_a_quiet_edit(client: Any, demo: Any) -> None:
    client.force_login(user("owner"))
    # The plain editor refuses it for a flag that serves in production
    plain = client.post(f"{FLAG}variations/write/edit/",
                        {"name": "Write tools", "value": "write", "description": "", "risk_rank": "0"}, headers=HTMX)
    assert plain.status_code == 403
    # The governed editor turns it into a request, with the reason
    response = client.post(f"{FLAG}variations/write/change/",
                           {"name": "Write tools", "value": "write", "description": "", "risk_rank": "0",
                            "reason": "write is safe now"}, headers=HTMX)
    change_request = ChangeRequest.objects.get()
    assert response["HX-Redirect"].endswith(f"/changes/{change_request.pk}/")
    assert change_request.proposed == {"risk_ranks": {"write": 0}}
    assert [r["code"] for r in change_request.reasons] == ["risk_lowered"]
    assert Variation.objects.get(flag__key="support_agent_tool_mode", key="write").risk_rank == 4
    # so the escalation still needs two approvals
    assert escalate().required_approvals == 2
    # raising a rank (safer) saves at once
    client.post(f"{FLAG}variations/none/change/",
                {"name": "No tools", "value": "none", "description": "", "risk_rank": "1"}, headers=HTMX)
    assert Variation.objects.get(flag__key="support_agent_tool_mode", key="none").risk_rank == 1

