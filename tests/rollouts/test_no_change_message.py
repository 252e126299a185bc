"""Submitting a form with nothing changed says "no change" and writes nothing: the governed
proposal (rollouts/propose_views.py), the direct targeting editor (flags/views.py) and the
segment editor (rollouts/segment_views.py). Each form is submitted exactly as the page shows it,
the way a person who opened it and pressed the button would."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from flags.models import Segment, Targeting
from rollouts.models import ChangeRequest
from tests.html_forms import form_as_shown
from tests.rollouts.support import FLAG_PAGE, TOOL_MODE, as_user

pytestmark = pytest.mark.django_db


def _production() -> Targeting:
    return Targeting.objects.get(flag__key=TOOL_MODE, environment__key="production")


def test_propose__nothing_changed__says_no_change_and_writes_nothing(client, demo) -> None:
    # Given the owner on the proposal page of a governed environment
    owner = as_user(client, "owner")
    url = f"{FLAG_PAGE}propose/production/"
    data = form_as_shown(owner.get(url).content.decode(), "version")
    before, events = _production().version, AuditEvent.objects.count()
    # When they give a reason and submit without changing anything
    data["reason"] = "Checking the form"
    response = owner.post(url, data, follow=True)
    # Then the page says no change, and nothing was written, requested or recorded
    text = response.content.decode()
    assert "No change:" in text and "Applied at once" not in text
    assert _production().version == before
    assert not ChangeRequest.objects.exists()
    assert AuditEvent.objects.count() == events


def test_targeting_edit__nothing_changed__says_no_change_and_writes_nothing(client, demo) -> None:
    # Given the owner on the direct editor of a non-governed environment
    owner = as_user(client, "owner")
    url = f"{FLAG_PAGE}targeting/development/"
    data = form_as_shown(owner.get(url).content.decode(), "version")
    before = Targeting.objects.get(flag__key=TOOL_MODE, environment__key="development")
    events = AuditEvent.objects.count()
    # When they save without changing anything
    response = owner.post(url, data, follow=True)
    # Then the page says no change; the version and the audit trail stay as they were
    text = response.content.decode()
    assert "No change:" in text and "saved." not in text
    assert Targeting.objects.get(pk=before.pk).version == before.version
    assert AuditEvent.objects.count() == events


def test_segment_edit__nothing_changed__says_no_change_and_writes_nothing(client, demo) -> None:
    # Given an editor on a segment's page
    owner = as_user(client, "owner")
    segment = Segment.objects.filter(project__key="support-assistant").order_by("key").first()
    assert segment is not None
    url = f"/p/support-assistant/segments/{segment.key}/"
    data = form_as_shown(owner.get(url).content.decode(), "version")
    data["reason"] = "Checking the form"
    events = AuditEvent.objects.count()
    # When they submit it unchanged
    response = owner.post(url, data, follow=True)
    # Then it says no change, and nothing was written
    text = response.content.decode()
    assert "No change:" in text and "saved." not in text
    assert Segment.objects.get(pk=segment.pk).version == segment.version
    assert not ChangeRequest.objects.exists()
    assert AuditEvent.objects.count() == events
