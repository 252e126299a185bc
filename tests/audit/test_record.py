"""audit.record(): one way in, inside the change's transaction, append-only."""

from __future__ import annotations

import pytest
from django.db import transaction

from audit.context import audit_context
from audit.models import AppendOnlyError, AuditEvent
from audit.services import AuditOutsideTransactionError, SystemActor, record
from tests.factories import make_project

pytestmark = pytest.mark.django_db


@pytest.mark.django_db(transaction=True)
def test_record__outside_a_transaction__refused() -> None:
    # (a transactional test: the ordinary test wrapper would itself be an open transaction)
    project = make_project()
    with pytest.raises(AuditOutsideTransactionError):
        record(actor=SystemActor("t"), action="flag.updated", target=project)


def test_record__user_actor__label_and_request_context_kept(make_user) -> None:
    user = make_user("fatima", first_name="Fatima", last_name="Owner")
    project = make_project()
    with audit_context(request_ip="10.1.2.3", user_agent="pytest"), transaction.atomic():
        first = record(actor=user, action="flag.updated", target=project, project=project, reason="why")
        second = record(actor=user, action="flag.updated", target=project, project=project)
    assert first.actor_label == "Fatima Owner (fatima)" and first.actor_kind == "user"
    assert first.request_ip == "10.1.2.3" and first.user_agent == "pytest" and first.reason == "why"
    # Rows of one action share a correlation id.
    assert first.correlation_id == second.correlation_id


def test_record__unknown_action__refused() -> None:
    project = make_project()
    with pytest.raises(ValueError), transaction.atomic():
        record(actor=SystemActor("t"), action="flag.teleported", target=project)


def test_audit_event__actor_deleted__row_and_label_survive(make_user) -> None:
    user = make_user("leaver")
    project = make_project()
    with transaction.atomic():
        event = record(actor=user, action="project.created", target=project, project=project)
    user_id = user.pk
    user.delete()
    # The row is untouched (no SET NULL update): the id and the label snapshot remain.
    event = AuditEvent.objects.get(pk=event.pk)
    assert event.actor_id == user_id and event.actor_label == "leaver"


def test_audit_event__update_or_delete__refused_by_model_and_queryset() -> None:
    make_project()
    event = AuditEvent.objects.first()
    event.summary = "rewritten"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(summary="rewritten")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).summary != "rewritten"


def test_audit_admin__offers_no_add_change_or_delete(admin_client) -> None:
    make_project()
    event = AuditEvent.objects.first()
    assert admin_client.get("/admin/audit/auditevent/add/").status_code == 403
    response = admin_client.post(f"/admin/audit/auditevent/{event.pk}/change/", {"summary": "x"})
    assert response.status_code == 403
    assert admin_client.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    # Reading stays possible for support staff.
    assert admin_client.get("/admin/audit/auditevent/").status_code == 200
