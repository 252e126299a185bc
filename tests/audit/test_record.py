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


def test_record__reason_longer_than_the_audit_keeps__raises_and_writes_nothing() -> None:
    from django.core.exceptions import ValidationError

    from audit.constants import TEXT_LIMITS

    project = make_project()
    rows = AuditEvent.objects.count()
    limit = TEXT_LIMITS["audit_reason"]
    # Refused, not cut
    with pytest.raises(ValidationError) as refused, transaction.atomic():
        record(actor=SystemActor("t"), action="flag.updated", target=project, project=project, reason="r" * (limit + 1))
    assert refused.value.message_dict == {"reason": ["Keep the reason to 6,000 characters at most (this one has 6,001)."]}
    assert AuditEvent.objects.count() == rows
    # At the limit it is kept whole
    with transaction.atomic():
        event = record(actor=SystemActor("t"), action="flag.updated", target=project, project=project, reason="r" * limit)
    assert AuditEvent.objects.get(pk=event.pk).reason == "r" * limit


def test_record__code_built_summary_and_labels_too_long__shortened_with_a_visible_ellipsis() -> None:
    from audit.constants import TEXT_LIMITS
    from audit.services import AuditTarget
    from audit.verify import verify_chain

    project = make_project()
    left = [f"flag_{n:04}" for n in range(300)]
    with transaction.atomic():
        event = record(actor=SystemActor("t"), action="incident.lifted", target=AuditTarget("x", "1", "L" * 400),
                       project=project, after={"left": left}, summary="Left as they are: " + ", ".join(left))
    stored = AuditEvent.objects.get(pk=event.pk)
    assert len(stored.summary) == TEXT_LIMITS["summary"] and stored.summary.endswith("…")
    assert stored.after == {"left": left}  # the full change is in before/after
    assert stored.target_label == "L" * 299 + "…"
    assert verify_chain().ok
