"""The de-escalation path in the console (rollouts/views.py): the kill switch form (a reason
required, the card then off), follow-ups acknowledged from the flag page by someone other than
their opener, and incident mode started and lifted from its page."""

from __future__ import annotations

import pytest

from rollouts.models import FollowUp, Incident
from tests.flags.support import HTMX
from tests.rollouts.support import PROFILE_PAGE as PROFILE
from tests.rollouts.support import as_user, production

pytestmark = pytest.mark.django_db


def test_killswitch__htmx_reason_required_then_card_shows_off(client, demo) -> None:
    url = f"{PROFILE}killswitch/production/"
    form = as_user(client, "operator").get(url, headers=HTMX)
    assert form.status_code == 200 and "Send everyone to baseline_v3" in form.content.decode()
    missing = client.post(url, {"reason": ""}, headers=HTMX)
    assert missing.status_code == 422 and missing["HX-Retarget"] == "#killswitch-production"
    assert production("support_assistant_profile").enabled is True
    done = client.post(url, {"reason": "citations point at stale docs"}, headers=HTMX)
    text = done.content.decode()
    assert done.status_code == 200 and 'id="env-production"' in text and "Kill switch flipped" in text
    assert production("support_assistant_profile").enabled is False and FollowUp.objects.count() == 1
    assert as_user(client, "owner").post(url, {"reason": "x"}).status_code == 403


def test_follow_up__acknowledged_from_the_flag_page(client, demo) -> None:
    as_user(client, "operator").post(f"{PROFILE}killswitch/production/", {"reason": "stale docs"})
    follow_up = FollowUp.objects.get()
    url = f"/p/support-assistant/follow-ups/{follow_up.pk}/acknowledge/"
    panel = as_user(client, "pm").get(f"{PROFILE}change-control/").content.decode()
    assert "Follow-ups to acknowledge" in panel and "stale docs" in panel
    empty = client.post(url, {"note": ""}, headers=HTMX)
    assert empty.status_code == 422
    done = client.post(url, {"note": "Docs index rebuilt; turn back on via a request"}, headers=HTMX)
    assert done.status_code == 200 and "Acknowledged by pm" in done.content.decode()
    assert as_user(client, "auditor").post(url, {"note": "x"}).status_code == 403


def test_follow_up__its_opener_sees_no_acknowledge_form(client, demo) -> None:
    as_user(client, "operator").post(f"{PROFILE}killswitch/production/", {"reason": "stale docs"})
    panel = client.get(f"{PROFILE}change-control/").content.decode()
    assert "Opened by you: someone else reviews it." in panel and "Acknowledge</button>" not in panel
    assert "Acknowledge</button>" in as_user(client, "lead").get(f"{PROFILE}change-control/").content.decode()
    assert "Acknowledge</button>" not in as_user(client, "auditor").get(f"{PROFILE}change-control/").content.decode()


def test_incident_mode__start_and_lift_from_the_page(client, demo) -> None:
    page = as_user(client, "operator").get("/p/support-assistant/incidents/")
    assert "No incidents yet." in page.content.decode()
    bad = client.post("/p/support-assistant/incidents/", {"environment": "production", "reason": ""})
    assert bad.status_code == 422 and not Incident.objects.exists()
    started = client.post("/p/support-assistant/incidents/", {"environment": "production",
                                                               "surfaces": ["agent_tools"], "reason": "tool abuse"})
    assert started.status_code == 302
    incident = Incident.objects.get()
    assert production().enabled is False
    assert "Incident mode is on in Production" in client.get(PROFILE + "change-control/").content.decode()
    lifted = client.post(f"/p/support-assistant/incidents/{incident.pk}/lift/", {"reason": "abuse blocked"},
                         headers=HTMX)
    assert lifted.status_code == 200 and lifted["HX-Redirect"] == "/p/support-assistant/incidents/"
    assert production().enabled is True
    assert as_user(client, "owner").post("/p/support-assistant/incidents/",
                                         {"environment": "production", "reason": "x"}).status_code == 403

