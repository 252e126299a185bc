"""The inbox pages, their htmx partials and the navigation count; the read-only admin."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.urls import reverse

from notifications import services
from notifications.models import Notification

HTMX = {"HX-Request": "true"}
INBOX = "/notifications/"
EMPTY_STATE = ("No notifications yet. You will hear here about change requests waiting for you, "
               "decisions on yours and kill switches on your flags.")


@pytest.fixture(autouse=True)
def _no_email_task(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests are about pages; the email path has its own tests.
    from notifications import tasks

    monkeypatch.setattr(tasks.send_notification_emails, "delay", lambda ids: None)


def _notify(user: Any, title: str = "Change request #3 waits for you", **extra: Any) -> Notification:
    spec = {"kind": "change_request.waiting", "body": "Alice asks to widen tool_mode.", "url": "/p/x/changes/3/"}
    spec.update(extra)
    (notification,) = services.notify(recipients=[user], title=title, **spec)
    return notification


def _nav_link(html: str) -> str:
    match = re.search(r'<a id="nav-notifications".*?</a>', html, re.S)
    assert match, "the navigation link is missing"
    return match.group(0)


# --- the inbox -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_inbox__own_and_others_notifications__lists_only_own_newest_first_unread_marked(
    client: Any, make_user: Callable[..., Any]
) -> None:
    # Given alice with a read and an unread notification, and bob with one of his own
    alice, bob = make_user(), make_user()
    older = _notify(alice, "Older decision")
    services.mark_read(user=alice, notification_ids=[older.pk])
    newer = _notify(alice, "Newer request")
    _notify(bob, "Bob's secret")
    client.force_login(alice)
    # When she opens her inbox
    response = client.get(INBOX)
    html = response.content.decode()
    # Then she sees her two, newest first, only the unread one marked new with a Mark read button
    assert response.status_code == 200
    assert "Bob&#x27;s secret" not in html and "Bob's secret" not in html
    assert html.index("Newer request") < html.index("Older decision")
    rows = re.findall(r'<article .*?</article>', html, re.S)
    assert len(rows) == 2
    assert 'data-unread="true"' in rows[0] and '<span class="badge info">new</span>' in rows[0]
    assert f'hx-post="{reverse("notifications:mark_read", args=[newer.pk])}"' in rows[0]
    assert 'data-unread="false"' in rows[1] and "new</span>" not in rows[1] and "Mark read" not in rows[1]
    assert 'href="/p/x/changes/3/"' in rows[0]
    assert newer.created_at.strftime("%Y") in rows[0]
    assert "Mark all read" in html


@pytest.mark.django_db
def test_inbox__no_notifications__empty_state(client: Any, make_user: Callable[..., Any]) -> None:
    client.force_login(make_user())
    response = client.get(INBOX)
    assert response.status_code == 200
    assert EMPTY_STATE in response.content.decode()
    assert "Mark all read" not in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("method, url", [("get", INBOX), ("post", "/notifications/1/read/"),
                                         ("post", "/notifications/read-all/")])
def test_notification_pages__anonymous__redirect_to_login(client: Any, method: str, url: str) -> None:
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.django_db
def test_navigation__unread_notifications__count_on_every_page(client: Any, make_user: Callable[..., Any]) -> None:
    # Given alice with two unread notifications
    alice = make_user()
    _notify(alice)
    _notify(alice)
    client.force_login(alice)
    # When she opens another page of the console
    html = client.get(reverse("flags:project_list")).content.decode()
    # Then the navigation shows her count
    link = _nav_link(html)
    assert '<span class="count" aria-label="2 unread">2</span>' in link
    assert "hx-swap-oob" not in link


# --- mark read -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_mark_read__htmx__row_swapped_and_nav_count_out_of_band(client: Any, make_user: Callable[..., Any]) -> None:
    # Given alice with two unread notifications
    alice = make_user()
    first, _second = _notify(alice, "First"), _notify(alice, "Second")
    client.force_login(alice)
    # When she marks the first read from the inbox
    response = client.post(reverse("notifications:mark_read", args=[first.pk]), headers=HTMX)
    html = response.content.decode()
    # Then the answer is the row, now read, plus the navigation link with the new count out of band
    assert response.status_code == 200
    assert f'id="notification-{first.pk}"' in html and 'data-unread="false"' in html
    assert "Mark read" not in html and "<html" not in html
    link = _nav_link(html)
    assert 'hx-swap-oob="true"' in link
    assert '<span class="count" aria-label="1 unread">1</span>' in link
    first.refresh_from_db()
    assert first.read_at is not None


@pytest.mark.django_db
def test_mark_read__htmx_last_unread__nav_count_disappears(client: Any, make_user: Callable[..., Any]) -> None:
    alice = make_user()
    only = _notify(alice)
    client.force_login(alice)
    html = client.post(reverse("notifications:mark_read", args=[only.pk]), headers=HTMX).content.decode()
    link = _nav_link(html)
    assert 'hx-swap-oob="true"' in link
    assert 'class="count"' not in link


@pytest.mark.django_db
def test_mark_read__without_htmx__redirects_to_the_inbox(client: Any, make_user: Callable[..., Any]) -> None:
    alice = make_user()
    notification = _notify(alice)
    client.force_login(alice)
    response = client.post(reverse("notifications:mark_read", args=[notification.pk]))
    assert response.status_code == 302
    assert response["Location"] == INBOX
    notification.refresh_from_db()
    assert notification.read_at is not None


@pytest.mark.django_db
def test_mark_read__someone_elses_notification__404_and_unchanged(client: Any, make_user: Callable[..., Any]) -> None:
    # Given a notification of bob's
    alice, bob = make_user(), make_user()
    theirs = _notify(bob)
    client.force_login(alice)
    # When alice tries to mark it read
    response = client.post(reverse("notifications:mark_read", args=[theirs.pk]), headers=HTMX)
    # Then it does not exist for her, and stays unread
    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.read_at is None


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/notifications/99999999999999999999999/read/", "/notifications/0/read/"])
def test_mark_read__unknown_or_out_of_range_id__404(client: Any, make_user: Callable[..., Any], url: str) -> None:
    client.force_login(make_user())
    assert client.post(url).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/notifications/1/read/", "/notifications/read-all/"])
def test_mark_read_urls__get__405(client: Any, make_user: Callable[..., Any], url: str) -> None:
    alice = make_user()
    _notify(alice)
    client.force_login(alice)
    assert client.get(url).status_code == 405
    assert Notification.objects.filter(read_at__isnull=True).count() == 1


@pytest.mark.django_db
def test_mark_all_read__htmx__list_swapped_own_rows_read_and_nav_count_cleared(
    client: Any, make_user: Callable[..., Any]
) -> None:
    # Given alice with two unread notifications and bob with one
    alice, bob = make_user(), make_user()
    _notify(alice)
    _notify(alice)
    theirs = _notify(bob)
    client.force_login(alice)
    # When she marks all read
    response = client.post(reverse("notifications:mark_all_read"), headers=HTMX)
    html = response.content.decode()
    # Then the list comes back with nothing new, the nav count is gone, and bob's row is untouched
    assert response.status_code == 200
    assert 'id="notification-list"' in html and "<html" not in html
    assert 'data-unread="true"' not in html and "Mark all read" not in html
    assert 'class="count"' not in _nav_link(html)
    assert not Notification.objects.filter(recipient=alice, read_at__isnull=True).exists()
    theirs.refresh_from_db()
    assert theirs.read_at is None


@pytest.mark.django_db
def test_mark_all_read__without_htmx__redirects_to_the_inbox(client: Any, make_user: Callable[..., Any]) -> None:
    alice = make_user()
    _notify(alice)
    client.force_login(alice)
    response = client.post(reverse("notifications:mark_all_read"))
    assert response.status_code == 302
    assert response["Location"] == INBOX
    assert not Notification.objects.filter(read_at__isnull=True).exists()


# --- admin ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin__superuser__may_look_but_not_add_change_or_delete(
    client: Any, make_user: Callable[..., Any], django_user_model: Any
) -> None:
    # Given a notification and a superuser in the Django admin
    notification = _notify(make_user(), "Visible in admin")
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests-1")
    client.force_login(admin)
    # When they list, open, add, change and delete
    listing = client.get(reverse("admin:notifications_notification_changelist"))
    detail = client.post(reverse("admin:notifications_notification_change", args=[notification.pk]),
                         {"title": "tampered"})
    add = client.get(reverse("admin:notifications_notification_add"))
    delete = client.post(reverse("admin:notifications_notification_delete", args=[notification.pk]), {"post": "yes"})
    # Then they see it, and every write is refused
    assert listing.status_code == 200 and "Visible in admin" in listing.content.decode()
    assert detail.status_code == 403
    assert add.status_code == 403
    assert delete.status_code == 403
    notification.refresh_from_db()
    assert notification.title == "Visible in admin"
