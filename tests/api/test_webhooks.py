"""Webhooks through the management API: project admins only (MANAGE_WEBHOOKS, as the console's
page), the service's address check as a 422 on `url`, the secret answered once at creation and
never again, audited writes, cursor pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from audit.constants import AuditAction
from audit.models import AuditEvent
from flags.constants import Role
from flags.models import Project
from tests.api.conftest import ApiClient
from tests.factories import TEST_ACTOR, grant, make_project
from tests.flags.support import audit_events_since, audit_mark
from webhooks import services as webhook_services
from webhooks.constants import TEST_EVENT
from webhooks.models import Webhook, WebhookDelivery

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

WEBHOOKS = "/projects/support-assistant/webhooks"
# Literal addresses: nothing is resolved, nothing is connected to (deliveries are only queued).
PUBLIC_URL = "https://93.184.215.14/hooks/T000/B000/token"


def via_token(client: ApiClient, name: str) -> str:
    return f" via API token {name} ({client.token[:12]}…)"


def make_webhook(project: Project, url: str = PUBLIC_URL, **extra: Any) -> Webhook:
    webhook, _ = webhook_services.webhook_create(project_id=project.pk, url=url, events=extra.pop("events", []),
                                                 actor=TEST_ACTOR, **extra)
    return webhook


# --- creating ----------------------------------------------------------------------------------

def test_webhook_create__admin__201_with_the_secret_once_and_audited_naming_the_token(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    # Given the project admin with a personal token
    client = personal_api("admin")
    mark = audit_mark()
    # When they add a webhook for change requests
    response = client.post(WEBHOOKS, {"url": PUBLIC_URL, "events": ["change_request."], "description": "CI"})
    # Then it is created, and the answer holds the secret the deliveries are signed with
    assert response.status_code == 201
    body = response.json()
    webhook = Webhook.objects.get(project_id=demo.pk)
    assert (body["id"], body["url"], body["events"], body["active"]) == (webhook.pk, PUBLIC_URL, ["change_request."],
                                                                          True)
    assert body["secret"] == webhook.secret
    (event,) = audit_events_since(mark, action=AuditAction.WEBHOOK_CREATED)
    assert event.project_id == demo.pk
    assert event.actor_label.endswith(via_token(client, "admin test"))
    assert webhook.secret not in str(event.after)
    # And reading it back never shows the secret again
    listed = client.get(WEBHOOKS).json()["items"]
    assert [item["id"] for item in listed] == [webhook.pk]
    assert "secret" not in listed[0] and webhook.secret not in client.get(WEBHOOKS).content.decode()


@pytest.mark.parametrize("url", ["http://10.0.0.5/hooks", "http://127.0.0.1:8000/hooks", "http://169.254.169.254/",
                                 "http://[::ffff:127.0.0.1]/hooks"])
def test_webhook_create__private_address__422_on_url_and_nothing_created(
        demo: Project, personal_api: Callable[..., ApiClient], url: str) -> None:
    client = personal_api("admin")
    mark = audit_mark()
    response = client.post(WEBHOOKS, {"url": url})
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    assert [error["path"] for error in response.json()["errors"]] == ["url"]
    assert not Webhook.objects.exists()
    assert audit_events_since(mark) == []


@pytest.mark.parametrize("body", [{"url": "ftp://93.184.215.14/x"}, {"url": "not an address"},
                                  {"url": PUBLIC_URL, "events": ["nonsense."]},
                                  {"url": PUBLIC_URL, "description": "nul\x00"}])
def test_webhook_create__invalid_input__422(demo: Project, personal_api: Callable[..., ApiClient],
                                            body: dict[str, Any]) -> None:
    response = personal_api("admin").post(WEBHOOKS, body)
    assert response.status_code == 422
    assert not Webhook.objects.exists()


@pytest.mark.parametrize("username", ["owner", "lead", "auditor", "operator"])
def test_webhooks__anyone_but_an_admin__403_on_list_and_create(
        demo: Project, personal_api: Callable[..., ApiClient], username: str) -> None:
    client = personal_api(username)
    assert client.get(WEBHOOKS).status_code == 403
    response = client.post(WEBHOOKS, {"url": PUBLIC_URL})
    assert response.status_code == 403
    assert response.json()["detail"] == "Webhooks are managed by the project's admins."
    assert not Webhook.objects.exists()


def test_webhooks__admin_token_with_read_scope__lists_but_cannot_create(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    make_webhook(demo)
    client = personal_api("admin", scopes=("read",))
    assert len(client.get(WEBHOOKS).json()["items"]) == 1
    response = client.post(WEBHOOKS, {"url": PUBLIC_URL})
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
    assert Webhook.objects.count() == 1


# --- listing -----------------------------------------------------------------------------------

def test_webhook_list__pages_of_two__every_webhook_once_in_order(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    # Given five webhooks, and one of another project
    ids = [make_webhook(demo, description=f"hook {n}").pk for n in range(5)]
    make_webhook(make_project("other"))
    client = personal_api("admin")
    # When the admin walks the list two at a time
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        body = client.get(WEBHOOKS, params).json()
        assert len(body["items"]) <= 2
        seen += [item["id"] for item in body["items"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    # Then each of the project's webhooks comes once, oldest first
    assert seen == ids


# --- changing ----------------------------------------------------------------------------------

def test_webhook_patch__deactivate_and_narrow__200_and_audited(demo: Project,
                                                               personal_api: Callable[..., ApiClient]) -> None:
    webhook = make_webhook(demo)
    client = personal_api("admin")
    mark = audit_mark()
    response = client.patch(f"{WEBHOOKS}/{webhook.pk}", {"active": False, "events": ["flag.", "segment."],
                                                         "description": "Deploy bot"})
    assert response.status_code == 200
    assert "secret" not in response.json()
    webhook.refresh_from_db()
    assert (webhook.active, webhook.events, webhook.description) == (False, ["flag.", "segment."], "Deploy bot")
    (event,) = audit_events_since(mark, action=AuditAction.WEBHOOK_UPDATED)
    assert event.after == {"active": False, "events": ["flag.", "segment."], "description": "Deploy bot"}
    assert event.actor_label.endswith(via_token(client, "admin test"))


def test_webhook_patch__private_address__422_on_url_and_unchanged(
        demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    webhook = make_webhook(demo)
    response = personal_api("admin").patch(f"{WEBHOOKS}/{webhook.pk}", {"url": "http://10.1.2.3/hooks"})
    assert response.status_code == 422
    assert [error["path"] for error in response.json()["errors"]] == ["url"]
    webhook.refresh_from_db()
    assert webhook.url == PUBLIC_URL


def test_webhook_patch__webhook_of_another_project__404(demo: Project,
                                                        personal_api: Callable[..., ApiClient]) -> None:
    theirs = make_webhook(make_project("other"))
    response = personal_api("admin").patch(f"{WEBHOOKS}/{theirs.pk}", {"active": False})
    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.active


def test_webhook_delete__admin__204_and_audited(demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    webhook = make_webhook(demo)
    client = personal_api("admin")
    mark = audit_mark()
    assert client.delete(f"{WEBHOOKS}/{webhook.pk}").status_code == 204
    assert not Webhook.objects.filter(pk=webhook.pk).exists()
    (event,) = audit_events_since(mark, action=AuditAction.WEBHOOK_DELETED)
    assert event.actor_label.endswith(via_token(client, "admin test"))
    assert client.delete(f"{WEBHOOKS}/{webhook.pk}").status_code == 404


def test_webhook_delete__editor__403_and_kept(demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    webhook = make_webhook(demo)
    assert personal_api("owner").delete(f"{WEBHOOKS}/{webhook.pk}").status_code == 403
    assert Webhook.objects.filter(pk=webhook.pk).exists()


# --- the test event ----------------------------------------------------------------------------

def test_webhook_test__active__202_and_one_test_delivery_queued(demo: Project,
                                                                personal_api: Callable[..., ApiClient]) -> None:
    webhook = make_webhook(demo, events=["flag."])
    response = personal_api("admin").post(f"{WEBHOOKS}/{webhook.pk}/test")
    assert response.status_code == 202
    delivery = WebhookDelivery.objects.get(webhook=webhook)
    assert response.json()["id"] == str(delivery.uuid)
    assert (delivery.event, delivery.status) == (TEST_EVENT, "pending")


def test_webhook_test__inactive__422_and_nothing_queued(demo: Project,
                                                        personal_api: Callable[..., ApiClient]) -> None:
    webhook = make_webhook(demo)
    webhook_services.webhook_update(webhook=webhook, active=False, actor=TEST_ACTOR)
    response = personal_api("admin").post(f"{WEBHOOKS}/{webhook.pk}/test")
    assert response.status_code == 422
    assert not WebhookDelivery.objects.exists()


def test_webhook_paths__id_beyond_any_row__404(demo: Project, personal_api: Callable[..., ApiClient]) -> None:
    client = personal_api("admin")
    assert client.post(f"{WEBHOOKS}/9223372036854775807/test").status_code == 404
    assert client.post(f"{WEBHOOKS}/99999999999999999999/test").status_code == 422


# --- another project's token -------------------------------------------------------------------

def test_webhooks__service_token_of_another_project__404_on_every_operation(
        demo: Project, service_api: Callable[..., ApiClient]) -> None:
    # Given a webhook of the demo, and a read-and-write service token of another project
    webhook = make_webhook(demo)
    other = make_project("other")
    grant(other, get_user_model().objects.get(username="admin"), Role.ADMIN)
    client = service_api(("read", "write"), project=other)
    mark = audit_mark()
    # When it reaches for the demo's webhooks
    answers = [client.get(WEBHOOKS), client.post(WEBHOOKS, {"url": PUBLIC_URL}),
               client.patch(f"{WEBHOOKS}/{webhook.pk}", {"active": False}),
               client.post(f"{WEBHOOKS}/{webhook.pk}/test"),
               client.delete(f"{WEBHOOKS}/{webhook.pk}")]
    # Then the project does not exist for it, and nothing changed
    assert [response.status_code for response in answers] == [404] * 5
    assert list(Webhook.objects.values_list("pk", "active")) == [(webhook.pk, True)]
    assert not WebhookDelivery.objects.exists()
    assert not AuditEvent.objects.filter(id__gt=mark, project_id=demo.pk).exists()
