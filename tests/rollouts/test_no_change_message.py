"""Submitting a form with nothing changed says "no change" and writes nothing: the governed
proposal (rollouts/propose_views.py), the direct targeting editor (flags/views.py) and the
segment editor (rollouts/segment_views.py). Each form is submitted exactly as the page shows it,
the way a person who opened it and pressed the button would."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from audit.models import AuditEvent
from flags.models import Segment, Targeting
from rollouts.models import ChangeRequest
from tests.rollouts.support import FLAG_PAGE, TOOL_MODE, as_user

pytestmark = pytest.mark.django_db


class _Forms(HTMLParser):
    """Every post form of a page with the values a browser would submit: checked boxes, selected
    options (else the first), text as shown."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[list[tuple[str, str]]] = []
        self._form: list[tuple[str, str]] | None = None
        self._select: str | None = None
        self._options: list[tuple[str, bool]] = []
        self._textarea: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and a.get("method", "").lower() == "post":
            self._form = []
            self.forms.append(self._form)
        if self._form is None:
            return
        if tag == "input" and a.get("name") and "disabled" not in a:
            kind = a.get("type", "text")
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            if kind not in ("submit", "button"):
                self._form.append((a["name"], a.get("value", "on" if kind == "checkbox" else "")))
        elif tag == "textarea" and a.get("name"):
            self._textarea = [a["name"], ""]
        elif tag == "select" and a.get("name"):
            self._select, self._options = a["name"], []
        elif tag == "option" and self._select:
            self._options.append((a.get("value", ""), "selected" in a))

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._textarea[1] += data

    def handle_endtag(self, tag: str) -> None:
        if self._form is None:
            return
        if tag == "textarea" and self._textarea is not None:
            self._form.append((self._textarea[0], self._textarea[1].removeprefix("\n")))
            self._textarea = None
        elif tag == "select" and self._select:
            chosen = [value for value, selected in self._options if selected] or [v for v, _ in self._options[:1]]
            self._form.extend((self._select, value) for value in chosen)
            self._select = None
        elif tag == "form":
            self._form = None


def form_as_shown(html: str, holding: str) -> dict[str, list[str]]:
    """The post form of the page that has a field named `holding`, as a browser would submit it."""
    parser = _Forms()
    parser.feed(html)
    for form in parser.forms:
        if any(name == holding for name, _ in form):
            data: dict[str, list[str]] = {}
            for name, value in form:
                data.setdefault(name, []).append(value)
            return data
    raise AssertionError(f"no form with a field {holding!r} on the page")


def _production() -> Targeting:
    return Targeting.objects.get(flag__key=TOOL_MODE, environment__key="production")


def test_propose__nothing_changed__says_no_change_and_writes_nothing(client, demo) -> None:
    # Given the owner on the proposal page of a governed environment
    owner = as_user(client, "owner")
    url = f"{FLAG_PAGE}propose/production/"
    data = form_as_shown(owner.get(url).content.decode(), "version")
    before, events = _production().version, AuditEvent.objects.count()
    # When they give a reason and submit without changing anything
    data["reason"] = ["Checking the form"]
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
    data["reason"] = ["Checking the form"]
    events = AuditEvent.objects.count()
    # When they submit it unchanged
    response = owner.post(url, data, follow=True)
    # Then it says no change, and nothing was written
    text = response.content.decode()
    assert "No change:" in text and "saved." not in text
    assert Segment.objects.get(pk=segment.pk).version == segment.version
    assert not ChangeRequest.objects.exists()
    assert AuditEvent.objects.count() == events
