"""The tamper-evident chain: verify_audit finds altered, removed and inserted rows (written
around the append-only trigger), and concurrent appends never fork it."""

from __future__ import annotations

import functools
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from audit.chain import GENESIS, HASHED_FIELDS, row_hash
from audit.context import audit_context
from audit.models import AuditEvent
from audit.services import SystemActor, record
from audit.verify import verify_chain
from tests.concurrency import run_together
from tests.factories import TEST_ACTOR, make_project, make_string_flag

pytestmark = pytest.mark.django_db


def _some_history() -> list[int]:
    project = make_project()
    flag = make_string_flag(project)
    from flags import services

    services.flag_update(flag=flag, actor=TEST_ACTOR, owner_team="t1")
    services.flag_update(flag=flag, actor=TEST_ACTOR, owner_team="t2", reason="Ünïcode reason ✓")
    return list(AuditEvent.objects.order_by("id").values_list("id", flat=True))


def _raw(sql: str, params: list) -> None:
    """Write straight to the table, around the model and (on PostgreSQL) the trigger."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = replica")  # triggers off, this transaction
        cursor.execute(sql, params)


def test_chain__services_write_history__verify_audit_passes() -> None:
    ids = _some_history()
    assert len(ids) >= 5
    first = AuditEvent.objects.order_by("id").first()
    assert first.prev_hash == GENESIS
    out = StringIO()
    call_command("verify_audit", stdout=out)
    assert f"{len(ids)} rows" in out.getvalue() and "intact" in out.getvalue()


def test_chain__row_altered__verify_names_that_row() -> None:
    ids = _some_history()
    target = ids[2]
    _raw("UPDATE audit_auditevent SET reason = %s WHERE id = %s", ["nothing to see", target])
    with pytest.raises(CommandError, match=rf"row #{target}: its content does not match its hash"):
        call_command("verify_audit", stdout=StringIO())


def test_chain__json_after_altered__detected() -> None:
    ids = _some_history()
    target = AuditEvent.objects.filter(action="flag.updated").order_by("id").first().pk
    _raw("UPDATE audit_auditevent SET after = %s WHERE id = %s", ['{"owner_team":"someone-else"}', target])
    report = verify_chain()
    assert (report.ok, report.bad_id) == (False, target)
    assert ids  # the rest of the chain was there to be walked


def test_chain__row_removed__verify_names_the_row_after_the_gap() -> None:
    ids = _some_history()
    _raw("DELETE FROM audit_auditevent WHERE id = %s", [ids[1]])
    with pytest.raises(CommandError, match=rf"row #{ids[2]}: .*removed or inserted"):
        call_command("verify_audit", stdout=StringIO())


def test_chain__row_inserted__verify_names_the_inserted_row() -> None:
    ids = _some_history()
    # A forged row, hashed correctly but linked into the middle of the chain.
    source = AuditEvent.objects.values(*HASHED_FIELDS).get(pk=ids[1])
    source["reason"] = "backdated approval"
    prev = AuditEvent.objects.get(pk=ids[1]).hash
    forged_hash = row_hash(source, prev)
    forged_id = ids[-1] + 10
    _raw("INSERT INTO audit_auditevent (id, created_at, actor_label, actor_kind, action, target_type, target_id, "
         "target_label, project_label, environment_label, summary, reason, correlation_id, user_agent, prev_hash, "
         "hash) SELECT %s, created_at, actor_label, actor_kind, action, target_type, target_id, target_label, "
         "project_label, environment_label, summary, %s, correlation_id, user_agent, %s, %s "
         "FROM audit_auditevent WHERE id = %s", [forged_id, "backdated approval", prev, forged_hash, ids[1]])
    report = verify_chain()
    assert (report.ok, report.bad_id) == (False, forged_id)
    assert "removed or inserted" in report.problem


@pytest.mark.parametrize("address", ["::ffff:192.0.2.1", "2001:0db8:0000::0001", "192.0.2.7"])
def test_chain__client_addresses__verify_intact(address: str) -> None:
    project = make_project()
    with audit_context(request_ip=address), transaction.atomic():
        record(actor=SystemActor("t"), action="flag.updated", target=project, project=project)
    report = verify_chain()
    assert report.ok, report.problem


@pytest.mark.postgres
@pytest.mark.parametrize("statement", [
    "UPDATE audit_auditevent SET reason = 'x'",
    "DELETE FROM audit_auditevent",
    "TRUNCATE audit_auditevent",
])
def test_trigger__update_delete_truncate__refused_by_postgresql(statement: str) -> None:
    _some_history()
    count = AuditEvent.objects.count()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement)
    assert AuditEvent.objects.count() == count


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_chain__concurrent_appends__never_fork() -> None:
    # Given eight transactions that each append five rows at the same moment
    project = make_project("concurrent")

    def writer(n: int) -> None:
        with transaction.atomic():
            for i in range(5):
                record(actor=SystemActor(f"writer-{n}"), action="flag.updated", target=project, project=project,
                       after={"i": i})

    _, errors = run_together(*(functools.partial(writer, n) for n in range(8)), timeout=60)
    # Then every row links to the one before it: one chain, no fork
    assert errors == []
    report = verify_chain()
    assert report.ok, report.problem
    prev_hashes = list(AuditEvent.objects.values_list("prev_hash", flat=True))
    assert len(prev_hashes) == len(set(prev_hashes))
    assert AuditEvent.objects.filter(action="flag.updated").count() == 40
