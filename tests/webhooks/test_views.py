"""The Webhooks page: project admins only, the secret shown once, errors beside the field,
the delivery log."""

from __future__ import annotations

from typing import Any

import pytest

from audit.models import AuditEvent
from flags import services as flag_services
from flags.constants import Role
from flags.models import Project
from tests.factories import TEST_ACTOR, make_project
from webhooks.egress import NOT_ALLOWED
from webhooks.models import Webhook, WebhookDelivery
from webhooks.services import webhook_create

pytestmark = pytest.mark.django_db

URL = "/p/proj/webhooks/"


@pytest.fixture
def project() -> Project:
    return make_project()


@pytest.fixture
def admin(project: Project, make_user: Any) -> Any:
    user = make_user("project_admin")
    flag_services.membership_grant(project=project, user=user, role=Role.ADMIN, actor=TEST_ACTOR)
    return user


def test_page__roles_other_than_admin__403(client: Any, project: Project, make_user: Any) -> None:
    # Given an editor of the project
    editor = make_user("editor")
    flag_services.membership_grant(project=project, user=editor, role=Role.EDITOR, actor=TEST_ACTOR)
    client.force_login(editor)
    # Then the page and its actions are refused, as a fragment for htmx
    assert client.get(URL).status_code == 403
    assert client.post(URL, {"url": "https://a.example.com/"}).status_code == 403
    response = client.get(URL, headers={"HX-Request": "true"})
    assert response.status_code == 403 and response["HX-Retarget"] == "#messages"
    assert not Webhook.objects.exists()


def test_page__another_projects_webhook__404(client: Any, admin: Any) -> None:
    # Given a webhook of a project the admin is not a member of
    other = make_project("other")
    theirs, _ = webhook_create(project_id=other.pk, url="https://a.example.com/", events=[], actor=TEST_ACTOR)
    client.force_login(admin)
    # Then neither that project's page nor its webhook through the admin's own project is reachable
    assert client.get("/p/other/webhooks/").status_code == 404
    for action in ("delete", "test", "active"):
        assert client.post(f"{URL}{theirs.pk}/{action}/", {"active": "0"}).status_code == 404
    theirs.refresh_from_db()
    assert theirs.active and not WebhookDelivery.objects.exists()


def test_create__valid__secret_shown_once_and_audited(client: Any, admin: Any) -> None:
    client.force_login(admin)
    # When the admin adds a webhook for flag and targeting events
    response = client.post(URL, {"url": "https://ci.example.com/hooks/fo", "events": ["flag.", "targeting."],
                                 "description": "CI"})
    # Then the page shows its secret, once
    webhook = Webhook.objects.get()
    assert response.status_code == 200
    assert webhook.secret in response.content.decode()
    assert webhook.events == ["flag.", "targeting."] and webhook.created_by == admin
    assert AuditEvent.objects.filter(action="webhook.created", actor=admin).exists()
    # And never again
    page = client.get(URL).content.decode()
    assert "https://ci.example.com/hooks/fo" in page and webhook.secret not in page


def test_create__bad_url__422_with_the_error_beside_the_field(client: Any, admin: Any) -> None:
    client.force_login(admin)
    response = client.post(URL, {"url": "ftp://files.example.com/drop", "events": ["flag."]})
    assert response.status_code == 422
    html = response.content.decode()
    assert 'class="field has-error"' in html and "Enter an http:// or https:// address" in html
    assert not Webhook.objects.exists()


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8000/admin/",
                                 "http://[::ffff:127.0.0.1]/", "http://100.64.0.1/"])
def test_create__internal_address__422_with_the_refusal_beside_the_field(
    client: Any, admin: Any, url: str
) -> None:
    client.force_login(admin)
    response = client.post(URL, {"url": url, "events": ["flag."]})
    assert response.status_code == 422
    html = response.content.decode()
    field = html[html.index('<div class="field has-error">'):]
    field = field[:field.index("</div>")]
    assert 'name="url"' in field and NOT_ALLOWED in field
    assert not Webhook.objects.exists()


def test_deactivate_test_and_delete__audited_and_logged(client: Any, project: Project, admin: Any) -> None:
    # Given a webhook
    webhook, _ = webhook_create(project_id=project.pk, url="https://a.example.com/h", events=[], actor=TEST_ACTOR)
    client.force_login(admin)
    # When the admin sends a test event, the delivery log shows it
    assert client.post(f"{URL}{webhook.pk}/test/").status_code == 302
    delivery = WebhookDelivery.objects.get()
    assert delivery.event == "webhook.test"
    log = client.get(URL, headers={"HX-Request": "true"})
    assert log.status_code == 200 and "<html" not in log.content.decode()
    assert 'data-testid="delivery"' in log.content.decode() and "webhook.test" in log.content.decode()
    # When deactivated, then deleted
    assert client.post(f"{URL}{webhook.pk}/active/", {"active": "0"}).status_code == 302
    webhook.refresh_from_db()
    assert not webhook.active
    assert client.post(f"{URL}{webhook.pk}/test/").status_code == 302  # refused with a message
    assert WebhookDelivery.objects.filter(event="webhook.test").count() == 1
    assert client.post(f"{URL}{webhook.pk}/delete/").status_code == 302
    assert not Webhook.objects.exists()
    assert list(AuditEvent.objects.filter(action__startswith="webhook.").order_by("id")
                .values_list("action", flat=True)) == ["webhook.created", "webhook.updated", "webhook.deleted"]


def test_flag_list__admin_sees_the_webhooks_button(client: Any, admin: Any) -> None:
    client.force_login(admin)
    assert 'href="/p/proj/webhooks/"' in client.get("/p/proj/").content.decode()
