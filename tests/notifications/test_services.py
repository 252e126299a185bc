"""notify, mark_read and the selectors: who gets a row, what is enqueued after commit, and
what a broker outage does to the caller (nothing)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from kombu.exceptions import OperationalError

from notifications import selectors, services, tasks
from notifications.models import Notification


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The id lists handed to the email task (the broker itself is not involved)."""
    calls: list[list[int]] = []
    monkeypatch.setattr(tasks.send_notification_emails, "delay", lambda ids: calls.append(ids))
    return calls


def _notify(*recipients: Any, **extra: Any) -> list[Notification]:
    spec = {"kind": "change_request.waiting", "title": "Change request #3 waits for you", "url": "/p/x/changes/3/"}
    spec.update(extra)
    return services.notify(recipients=list(recipients), **spec)


# --- notify --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_notify__duplicate_none_and_inactive_recipients__one_row_per_active_user(
    make_user: Callable[..., Any], enqueued: list[list[int]], django_capture_on_commit_callbacks: Any
) -> None:
    # Given two active users, one of them listed twice (as two loaded instances), None and an inactive user
    alice, bob = make_user("alice"), make_user("bob")
    retired = make_user("retired", is_active=False)
    alice_again = type(alice).objects.get(pk=alice.pk)
    # When the caller notifies them all and its transaction commits
    with django_capture_on_commit_callbacks(execute=True):
        created = _notify(alice, None, bob, alice_again, retired)
    # Then each active user has exactly one row, and one task carries both ids
    assert sorted(n.recipient_id for n in created) == sorted([alice.pk, bob.pk])
    assert Notification.objects.filter(recipient=alice).count() == 1
    assert not Notification.objects.filter(recipient=retired).exists()
    assert enqueued == [[n.pk for n in created]]


@pytest.mark.django_db
def test_notify__nobody_to_notify__no_rows_and_no_task(
    make_user: Callable[..., Any], enqueued: list[list[int]], django_capture_on_commit_callbacks: Any
) -> None:
    # Given only an inactive user and None
    retired = make_user(is_active=False)
    # When notified
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        created = _notify(retired, None)
    # Then nothing is written and nothing is enqueued
    assert created == []
    assert callbacks == []
    assert enqueued == []
    assert Notification.objects.count() == 0


@pytest.mark.django_db
def test_notify__before_commit__nothing_enqueued_yet(
    make_user: Callable[..., Any], enqueued: list[list[int]], django_capture_on_commit_callbacks: Any
) -> None:
    # Given a caller still inside its transaction
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        _notify(make_user())
        # Then the task waits for the commit
        assert enqueued == []
    assert len(callbacks) == 1


@pytest.mark.django_db
def test_notify__caller_rolls_back__no_rows_and_no_task(
    make_user: Callable[..., Any], enqueued: list[list[int]], django_capture_on_commit_callbacks: Any
) -> None:
    # Given a user
    user = make_user()
    # When the caller's transaction fails after notifying
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            _notify(user)
            raise RuntimeError("the governed change failed")
    # Then the notification went with it, and no email task was sent
    assert Notification.objects.count() == 0
    assert callbacks == []
    assert enqueued == []


@pytest.mark.django_db
def test_notify__broker_down_at_enqueue__caller_unaffected_and_sweep_sends_later(
    make_user: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, mailoutbox: list[Any],
    django_capture_on_commit_callbacks: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a broker that refuses connections
    def broker_down(ids: list[int]) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.send_notification_emails, "delay", broker_down)
    user = make_user(email="alice@example.com")
    # When the caller notifies and commits
    with caplog.at_level(logging.WARNING, logger="notifications.services"):
        with django_capture_on_commit_callbacks(execute=True):
            (notification,) = _notify(user)
    # Then the caller saw no error, the row waits unsent, and the outage is logged
    notification.refresh_from_db()
    assert notification.emailed_at is None
    assert "the sweep will retry" in caplog.text
    assert mailoutbox == []
    # And the sweep sends it once the broker (and its beat) are back
    assert tasks.send_pending_notification_emails() == 1
    assert [m.to for m in mailoutbox] == [["alice@example.com"]]


@pytest.mark.django_db
def test_notify__multiline_overlong_title__one_line_within_the_column(
    make_user: Callable[..., Any], enqueued: list[list[int]]
) -> None:
    # Given a title with a newline (an email header injection) and 300 characters
    title = "Flag x\nBcc: everyone@example.com " + "y" * 300
    # When notified
    (notification,) = _notify(make_user(), title=title)
    # Then the stored title is one line and fits its column
    notification.refresh_from_db()
    assert "\n" not in notification.title
    assert len(notification.title) == 200
    assert notification.title.endswith("…")


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["https://evil.example/", "//evil.example/x", "javascript:alert(1)", "/p/x y/"])
def test_notify__link_outside_the_console__refused(make_user: Callable[..., Any], url: str) -> None:
    # Given a link that is not a console path, When notified, Then the caller's bug is refused
    with pytest.raises(ValidationError):
        _notify(make_user(), url=url)
    assert Notification.objects.count() == 0


@pytest.mark.django_db
def test_notify__kind_not_a_code__refused(make_user: Callable[..., Any]) -> None:
    with pytest.raises(ValidationError):
        _notify(make_user(), kind="Change Request!")
    assert Notification.objects.count() == 0


# --- mark_read -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_mark_read__ids_including_someone_elses__only_own_rows_change(
    make_user: Callable[..., Any], enqueued: list[list[int]]
) -> None:
    # Given one notification each for alice and bob
    alice, bob = make_user(), make_user()
    (mine,) = _notify(alice)
    (theirs,) = _notify(bob)
    # When alice marks both ids read
    changed = services.mark_read(user=alice, notification_ids=[mine.pk, theirs.pk])
    # Then only hers changed
    assert changed == 1
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.read_at is not None
    assert theirs.read_at is None


@pytest.mark.django_db
def test_mark_read__no_ids__all_own_unread_and_earlier_reads_keep_their_time(
    make_user: Callable[..., Any], enqueued: list[list[int]]
) -> None:
    # Given alice with one read and two unread notifications, and bob with one unread
    alice, bob = make_user(), make_user()
    (earlier,) = _notify(alice)
    services.mark_read(user=alice, notification_ids=[earlier.pk])
    earlier.refresh_from_db()
    _notify(alice)
    _notify(alice)
    _notify(bob)
    # When alice marks everything read
    changed = services.mark_read(user=alice)
    # Then her two unread ones changed, the earlier read time stayed, and bob's is untouched
    assert changed == 2
    assert selectors.unread_count(alice) == 0
    assert Notification.objects.get(pk=earlier.pk).read_at == earlier.read_at
    assert selectors.unread_count(bob) == 1


@pytest.mark.django_db
def test_mark_read__anonymous__changes_nothing(make_user: Callable[..., Any], enqueued: list[list[int]]) -> None:
    from django.contrib.auth.models import AnonymousUser

    _notify(make_user())
    assert services.mark_read(user=AnonymousUser()) == 0
    assert Notification.objects.filter(read_at__isnull=True).count() == 1


# --- selectors -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_inbox__many_notifications__own_newest_first_up_to_the_limit(
    make_user: Callable[..., Any], enqueued: list[list[int]]
) -> None:
    # Given alice with three notifications and bob with one
    alice, bob = make_user(), make_user()
    created = [_notify(alice, title=f"n{i}")[0] for i in range(3)]
    _notify(bob)
    # When her inbox is read with a limit of two
    rows = selectors.inbox(alice, limit=2)
    # Then the two newest of hers come first
    assert [n.pk for n in rows] == [created[2].pk, created[1].pk]
    assert selectors.unread_count(alice) == 3


# --- settle --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_settle__rows_of_those_kinds_about_that_url__retitled_read_once_others_untouched(
    make_user: Callable[..., Any], enqueued: list[list[int]], django_capture_on_commit_callbacks: Any
) -> None:
    # Given two approvers asked about request 3 (one has read it), a reminder about it, and rows about other things
    alice, bob = make_user("alice"), make_user("bob")
    with django_capture_on_commit_callbacks(execute=True):
        asked = _notify(alice, bob, body="Alice asks to widen tool_mode.")
        reminded = _notify(alice, kind="reminder.change_request_waiting", title="#3 waits for approval")
        other_request = _notify(alice, url="/p/x/changes/4/")
        other_kind = _notify(alice, kind="change_request.decided", title="Approved: #3")
    services.mark_read(user=bob, notification_ids=[asked[1].pk])
    bob_read_at = Notification.objects.get(pk=asked[1].pk).read_at
    # When request 3 is settled
    changed = services.settle(url="/p/x/changes/3/", kinds=["change_request.waiting", "reminder.change_request_waiting"],
                              settled_kind="change_request.settled", title="Cancelled by carol: #3",
                              note="Cancelled by carol.")
    # Then its asking rows say so, read (bob's first read kept), what they said below the note
    assert changed == 3
    for row in Notification.objects.filter(pk__in=[asked[0].pk, asked[1].pk, reminded[0].pk]):
        assert (row.kind, row.title) == ("change_request.settled", "Cancelled by carol: #3")
        assert row.read_at is not None and row.body.startswith("Cancelled by carol.\n\n")
    assert Notification.objects.get(pk=asked[0].pk).body == "Cancelled by carol.\n\nAlice asks to widen tool_mode."
    assert Notification.objects.get(pk=asked[1].pk).read_at == bob_read_at
    assert selectors.unread_count(alice) == 2  # the other request's row and the decision stay unread
    for row in (*other_request, *other_kind):
        fresh = Notification.objects.get(pk=row.pk)
        assert (fresh.kind, fresh.title, fresh.read_at) == (row.kind, row.title, None)
    # And settling again finds nothing left to settle
    assert services.settle(url="/p/x/changes/3/", kinds=["change_request.waiting"],
                           settled_kind="change_request.settled", title="Applied", note="Applied.") == 0
    with pytest.raises(ValidationError):
        services.settle(url="/p/x/changes/3/", kinds=["x"], settled_kind="Not A Kind", title="t", note="n")
