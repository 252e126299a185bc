"""Checkpoints of the audit chain: signed with a key kept out of the database, published to a
file, the project webhooks and the auditors' mailboxes, and checked by
`verify_audit --checkpoints` — which catches the rewrite (trigger off, row changed, later
hashes recomputed) that the chain alone cannot, and rows cut off its end."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core import mail
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from audit import tasks
from audit.chain import GENESIS, HASHED_FIELDS, row_hash
from audit.checkpoints import WEBHOOK_EVENT, Checkpoint, checkpoint_from_line, checkpoint_publish, key_id
from audit.models import AuditEvent
from featureops_site.celery import app as celery_app
from flags import services
from flags.constants import Role
from flags.models import Flag
from tests.factories import TEST_ACTOR, grant, make_project, make_string_flag
from tests.workers import require_broker
from webhooks.models import WebhookDelivery
from webhooks.services import webhook_create, webhook_update

KEY = "checkpoint-key-for-tests-0123456789abcdef"
OTHER_KEY = "another-checkpoint-key-9876543210fedcba"


@pytest.fixture
def checkpoint_file(settings: Any, tmp_path: Path) -> Path:
    settings.AUDIT_CHECKPOINT_KEY = KEY
    settings.AUDIT_CHECKPOINT_PATH = str(tmp_path / "anchors" / "audit-checkpoints.jsonl")
    return Path(settings.AUDIT_CHECKPOINT_PATH)


def _flag_with_history() -> Flag:
    flag = make_string_flag(make_project())
    services.flag_update(flag=flag, actor=TEST_ACTOR, owner_team="first-owner")
    return flag


def _more_history(flag: Flag, tag: str, rows: int = 2) -> list[int]:
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    for n in range(rows):
        services.flag_update(flag=flag, actor=TEST_ACTOR, owner_team=f"{tag}-{n}", reason=f"handover {tag} {n}")
    return list(AuditEvent.objects.filter(id__gt=before).order_by("id").values_list("id", flat=True))


def _publish() -> Checkpoint:
    checkpoint = checkpoint_publish()
    assert checkpoint is not None
    return checkpoint


@contextlib.contextmanager
def _as_the_application_role() -> Iterator[Any]:
    """What anyone holding the application's database role can do: it owns the audit table,
    so it may switch the append-only trigger off, write, and switch it back on. (SQLite has
    no trigger; the model's refusal is all there is.)"""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update_delete")
        yield cursor
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_update_delete")


def _recompute_hashes_from(cursor: Any, first_id: int) -> None:
    """The attacker's second step: relink every row from `first_id` on with the chain code."""
    prev = (AuditEvent.objects.filter(id__lt=first_id).order_by("-id").values_list("hash", flat=True).first()
            or GENESIS)
    for values in list(AuditEvent.objects.filter(id__gte=first_id).order_by("id").values("id", *HASHED_FIELDS)):
        new = row_hash(values, prev)
        cursor.execute("UPDATE audit_auditevent SET prev_hash = %s, hash = %s WHERE id = %s", [prev, new, values["id"]])
        prev = new


def _verify(path: Path | None = None) -> str:
    out = StringIO()
    arguments = ["--checkpoints", str(path)] if path else ["--checkpoints"]
    call_command("verify_audit", *arguments, stdout=out, stderr=StringIO())
    return out.getvalue()


def _verify_fails(path: Path) -> tuple[str, str]:
    err = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("verify_audit", "--checkpoints", str(path), stdout=StringIO(), stderr=err)
    return str(raised.value), err.getvalue()


def _plain_verify_passes() -> str:
    out = StringIO()
    call_command("verify_audit", stdout=out)
    return out.getvalue()


# --- publishing ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_checkpoint_publish__chain_with_history__one_signed_line_naming_the_head(checkpoint_file: Path) -> None:
    # Given some history
    _flag_with_history()
    rows = AuditEvent.objects.count()
    head = AuditEvent.objects.order_by("-id").first()
    # When a checkpoint is published
    checkpoint_publish()
    # Then the file holds one line: the head's id and hash, the row count, signed with the key
    (line,) = checkpoint_file.read_text().splitlines()
    published = json.loads(line)
    assert (published["head_id"], published["head_hash"], published["count"]) == (head.pk, head.hash, rows)
    assert published["key_id"] == key_id(KEY.encode()) and len(published["signature"]) == 64
    assert checkpoint_from_line(line, key=KEY.encode()).head_hash == head.hash
    # and publishing wrote no audit row (it would move the head it certifies)
    assert AuditEvent.objects.count() == rows


@pytest.mark.django_db
def test_checkpoint_publish__empty_trail__publishes_nothing(checkpoint_file: Path) -> None:
    assert not AuditEvent.objects.exists()
    assert checkpoint_publish() is None
    assert not checkpoint_file.exists()


@pytest.mark.django_db
def test_publish_task__webhooks_and_members__one_delivery_per_subscriber_and_one_email_per_auditor(
    checkpoint_file: Path, make_user: Any, eager_celery: None,
) -> None:
    # Given two projects; someone auditing both, an auditor of one, and members in other roles
    support, billing = make_project("support"), make_project("billing")
    both = make_user("auditor-both", email="both@example.com")
    one = make_user("auditor-one", email="one@example.com")
    for project in (support, billing):
        grant(project, both, Role.AUDITOR)
    grant(billing, one, Role.AUDITOR)
    for role in (Role.ADMIN, Role.APPROVER, Role.EDITOR, Role.OPERATOR, Role.VIEWER):
        grant(support, make_user(f"{role}-member", email=f"{role}@example.com"), role)
    grant(support, make_user("auditor-without-address", email=""), Role.AUDITOR)
    grant(support, make_user("auditor-gone", email="gone@example.com", is_active=False), Role.AUDITOR)
    # and webhooks: one for every event, one for flag events only, one for every event but inactive
    every, _ = webhook_create(project_id=support.pk, url="https://hooks.example.com/all", events=[], actor=TEST_ACTOR)
    webhook_create(project_id=support.pk, url="https://hooks.example.com/flags", events=["flag."], actor=TEST_ACTOR)
    inactive, _ = webhook_create(project_id=billing.pk, url="https://hooks.example.com/off", events=[],
                                 actor=TEST_ACTOR)
    webhook_update(webhook=inactive, actor=TEST_ACTOR, active=False)
    mail.outbox.clear()
    # When the beat task runs once
    head_id = tasks.publish_checkpoint.delay().get()
    # Then one line is in the file
    (line,) = checkpoint_file.read_text().splitlines()
    assert json.loads(line)["head_id"] == head_id == AuditEvent.objects.order_by("-id").values_list("id", flat=True)[0]
    # one delivery, to the webhook that takes every event, carrying the same signed checkpoint
    (delivery,) = WebhookDelivery.objects.filter(event=WEBHOOK_EVENT)
    assert delivery.webhook_id == every.pk
    assert delivery.payload["data"] == json.loads(line)
    assert checkpoint_from_line(json.dumps(delivery.payload["data"]), key=KEY.encode()).head_id == head_id
    # and one email to each active auditor with an address (once, whatever they audit), to nobody else
    assert sorted(message.to[0] for message in mail.outbox) == ["both@example.com", "one@example.com"]
    assert all(len(message.to) == 1 for message in mail.outbox)
    assert f"event #{head_id}" in mail.outbox[0].subject
    assert line in mail.outbox[0].body.splitlines()


@pytest.mark.django_db
def test_publish_task__no_key__logs_and_publishes_nothing(
    checkpoint_file: Path, settings: Any, make_user: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    # Given history, an auditor and a webhook, but no AUDIT_CHECKPOINT_KEY (DEBUG is off)
    project = make_project()
    grant(project, make_user("auditor", email="auditor@example.com"), Role.AUDITOR)
    webhook_create(project_id=project.pk, url="https://hooks.example.com/all", events=[], actor=TEST_ACTOR)
    settings.AUDIT_CHECKPOINT_KEY = ""
    mail.outbox.clear()
    # When the task runs
    with caplog.at_level(logging.ERROR, logger="audit.tasks"):
        result = tasks.publish_checkpoint()
    # Then it says why, and nothing is published anywhere
    assert result is None
    assert "AUDIT_CHECKPOINT_KEY is not set" in caplog.text
    assert not checkpoint_file.exists()
    assert not WebhookDelivery.objects.filter(event=WEBHOOK_EVENT).exists()
    assert mail.outbox == []


@pytest.mark.django_db
def test_publish_task__file_destination_fails__others_still_publish_and_failure_is_logged(
    checkpoint_file: Path, settings: Any, make_user: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an auditor, and a checkpoint path that is a folder (cannot be written as a file)
    grant(make_project(), make_user("auditor", email="auditor@example.com"), Role.AUDITOR)
    checkpoint_file.mkdir(parents=True)
    mail.outbox.clear()
    # When the task runs
    with caplog.at_level(logging.ERROR, logger="audit.checkpoints"):
        head_id = tasks.publish_checkpoint()
    # Then the failure is logged and the auditor still gets the checkpoint
    assert "audit.checkpoints.append_to_file failed" in caplog.text
    (message,) = mail.outbox
    assert message.to == ["auditor@example.com"] and f"event #{head_id}" in message.subject


@pytest.mark.django_db
def test_publish_command__history__prints_and_appends_the_same_line(checkpoint_file: Path) -> None:
    _flag_with_history()
    out = StringIO()
    call_command("publish_audit_checkpoint", stdout=out)
    (line,) = checkpoint_file.read_text().splitlines()
    assert out.getvalue().strip() == line
    assert checkpoint_from_line(line, key=KEY.encode()).count == AuditEvent.objects.count()


@pytest.mark.django_db
def test_publish_command__no_key__fails_saying_so(checkpoint_file: Path, settings: Any) -> None:
    _flag_with_history()
    settings.AUDIT_CHECKPOINT_KEY = ""
    with pytest.raises(CommandError, match="AUDIT_CHECKPOINT_KEY is not set"):
        call_command("publish_audit_checkpoint", stdout=StringIO())
    assert not checkpoint_file.exists()


def test_beat_schedule__declares_the_checkpoint_task_hourly() -> None:
    entry = celery_app.conf.beat_schedule["publish-audit-checkpoint"]
    assert entry["task"] == tasks.publish_checkpoint.name == "audit.tasks.publish_checkpoint"
    assert entry["schedule"].total_seconds() == int(os.environ.get("AUDIT_CHECKPOINT_SECONDS") or 3600)
    assert tasks.publish_checkpoint.name in celery_app.tasks


@pytest.mark.parametrize(("env", "expected"), [
    ({"DEBUG": "0", "SECRET_KEY": "x" * 50}, "''"),
    ({"DEBUG": "1"}, "'insecure-audit-checkpoint-key-only-used-with-DEBUG'"),
    ({"DEBUG": "0", "SECRET_KEY": "x" * 50, "AUDIT_CHECKPOINT_KEY": KEY}, repr(KEY)),
])
def test_settings__checkpoint_key__from_environment_with_no_default_outside_debug(
    env: dict[str, str], expected: str,
) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG", "AUDIT_CHECKPOINT_KEY"}}
    result = subprocess.run([sys.executable, "-c", "import featureops_site.settings as s; print(repr(s.AUDIT_CHECKPOINT_KEY))"],
                            cwd=django_settings.BASE_DIR, env={**clean, **env}, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_publish_task__real_worker_and_broker__line_written_and_auditor_emailed_once(
    checkpoint_file: Path, make_user: Any,
) -> None:
    from celery.contrib.testing.worker import start_worker

    require_broker()
    # Given committed history and an auditor
    grant(make_project(), make_user("auditor", email="auditor@example.com"), Role.AUDITOR)
    head = AuditEvent.objects.order_by("-id").values("id", "hash").first()
    mail.outbox.clear()
    # (a queue of its own, so no other consumer of the broker takes the message)
    queue = f"test-checkpoints-{uuid.uuid4().hex[:12]}"
    # When the task is sent through the broker to a real worker
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10, queues=[queue]):
        tasks.publish_checkpoint.apply_async(queue=queue)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (checkpoint_file.exists() and mail.outbox):
            time.sleep(0.2)
    # Then the worker wrote the head's checkpoint once and emailed the auditor once
    (line,) = checkpoint_file.read_text().splitlines()
    checkpoint = checkpoint_from_line(line, key=KEY.encode())
    assert (checkpoint.head_id, checkpoint.head_hash) == (head["id"], head["hash"])
    assert [message.to for message in mail.outbox] == [["auditor@example.com"]]
    assert "intact and matching 1 checkpoint in" in _verify(checkpoint_file)


# --- verify_audit --checkpoints --------------------------------------------------------------


@pytest.mark.django_db
def test_verify_checkpoints__untouched_chain__passes_and_says_what_is_not_yet_covered(checkpoint_file: Path) -> None:
    # Given two checkpoints, and rows written after the second
    flag = _flag_with_history()
    _publish()
    _more_history(flag, "b")
    second = _publish()
    later = _more_history(flag, "c", rows=3)
    # When the configured checkpoint file is checked
    out = _verify()
    # Then both match, and the rows after the latest checkpoint are named as not yet covered
    assert f"intact and matching 2 checkpoints in {checkpoint_file}" in out
    assert f"Latest checkpoint: event #{second.head_id}" in out
    assert f"{len(later)} rows were appended after it" in out


@pytest.mark.django_db
def test_verify_checkpoints__lines_out_of_chain_order__still_pass(checkpoint_file: Path) -> None:
    # Given checkpoints whose lines landed in the file out of order (two workers racing)
    flag = _flag_with_history()
    _publish()
    _more_history(flag, "b")
    _publish()
    lines = checkpoint_file.read_text().splitlines()
    checkpoint_file.write_text("\n".join(reversed(lines)) + "\n\n")
    # When / Then they are met in chain order, and a blank line is no checkpoint
    assert "intact and matching 2 checkpoints" in _verify(checkpoint_file)


@pytest.mark.postgres
@pytest.mark.django_db
def test_verify_checkpoints__trigger_disabled_row_rewritten_later_hashes_recomputed__first_checkpoint_after_it_fails(
    checkpoint_file: Path,
) -> None:
    # Given history and three checkpoints: before a row, after it, and later
    flag = _flag_with_history()
    first = _publish()
    target, *_ = _more_history(flag, "b")
    second = _publish()
    _more_history(flag, "c")
    _publish()
    # and the append-only trigger refuses a plain rewrite
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET reason = 'approved by the CISO' WHERE id = %s", [target])
    # When someone holding the application's role switches the trigger off, rewrites the row's
    # reason, recomputes every later hash with the chain code, and switches the trigger back on
    with _as_the_application_role() as cursor:
        cursor.execute("UPDATE audit_auditevent SET reason = %s WHERE id = %s", ["approved by the CISO", target])
        _recompute_hashes_from(cursor, target)
    assert AuditEvent.objects.get(pk=target).reason == "approved by the CISO"
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET reason = 'again' WHERE id = %s", [target])
    # Then the chain alone looks intact: the attack is real
    assert "audit chain intact" in _plain_verify_passes()
    # but the checkpoints fail, naming the first one published after the rewritten row
    message, details = _verify_fails(checkpoint_file)
    assert message.startswith(f"first bad checkpoint: checkpoint line 2 (event #{second.head_id}): does not match")
    assert "a row was rewritten" in message and f"after event #{first.head_id}" in message
    assert "2 of 3 lines fail" in message
    assert "checkpoint line 3" in details and "checkpoint line 1" not in details


@pytest.mark.django_db
def test_verify_checkpoints__middle_row_deleted_and_chain_relinked__row_count_mismatch_named(
    checkpoint_file: Path,
) -> None:
    # Given two checkpoints
    flag = _flag_with_history()
    first = _publish()
    removed, *_ = _more_history(flag, "b")
    second = _publish()
    # When a row after the first is deleted and the later rows relinked around it
    with _as_the_application_role() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [removed])
        _recompute_hashes_from(cursor, removed)
    assert "audit chain intact" in _plain_verify_passes()
    # Then the second checkpoint fails on its row count
    message, _ = _verify_fails(checkpoint_file)
    assert f"checkpoint line 2 (event #{second.head_id})" in message
    assert f"counted {second.count}: rows were removed or inserted" in message
    assert f"after event #{first.head_id}" in message


@pytest.mark.django_db
def test_verify_checkpoints__last_rows_deleted__checkpoint_past_the_new_end_named(checkpoint_file: Path) -> None:
    # Given two checkpoints
    flag = _flag_with_history()
    first = _publish()
    cut = _more_history(flag, "b", rows=3)
    second = _publish()
    # When the rows after the first checkpoint are deleted from the end (no hash needs recomputing)
    with _as_the_application_role() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id >= %s", [cut[0]])
    # Then the chain alone looks intact, but the second checkpoint names an event that is gone
    assert "audit chain intact" in _plain_verify_passes()
    message, _ = _verify_fails(checkpoint_file)
    assert f"checkpoint line 2 (event #{second.head_id}): event #{second.head_id} is gone" in message
    assert f"the chain now ends at #{first.head_id} with {first.count} rows" in message
    assert "rows were deleted from the end" in message


@pytest.mark.django_db
def test_verify_checkpoints__row_altered_without_rehashing__both_the_row_and_the_checkpoint_named(
    checkpoint_file: Path,
) -> None:
    flag = _flag_with_history()
    target, *_ = _more_history(flag, "b")
    _publish()
    with _as_the_application_role() as cursor:
        cursor.execute("UPDATE audit_auditevent SET reason = %s WHERE id = %s", ["nothing to see", target])
    message, _ = _verify_fails(checkpoint_file)
    assert "first bad checkpoint: checkpoint line 1" in message
    assert f"the chain itself is broken at row #{target}: its content does not match its hash" in message


@pytest.mark.django_db
@pytest.mark.parametrize(("tamper", "expected"), [
    (lambda fields: {**fields, "head_hash": "0" * 64}, "its signature does not match its content"),
    (lambda fields: {**fields, "count": fields["count"] - 1}, "its signature does not match its content"),
    (lambda fields: {**fields, "note": "added"}, "its signature does not match its content"),
    (lambda fields: {**fields, "signature": "f" * 64}, "its signature does not match its content"),
    (lambda fields: {k: v for k, v in fields.items() if k != "signature"}, "not a checkpoint (no signature)"),
    (lambda fields: ["a", "list"], "not a checkpoint (no signature)"),
    (lambda fields: "{not json", "not JSON"),
], ids=["head-hash", "count", "added-field", "forged-signature", "no-signature", "not-an-object", "not-json"])
def test_verify_checkpoints__tampered_line__that_line_named(checkpoint_file: Path, tamper: Any, expected: str) -> None:
    # Given three checkpoints
    flag = _flag_with_history()
    for tag in ("b", "c"):
        _publish()
        _more_history(flag, tag)
    _publish()
    # When the second line is edited
    lines = checkpoint_file.read_text().splitlines()
    edited = tamper(json.loads(lines[1]))
    lines[1] = edited if isinstance(edited, str) else json.dumps(edited)
    checkpoint_file.write_text("\n".join(lines) + "\n")
    # Then that line is the bad checkpoint, and the others still match
    message, _ = _verify_fails(checkpoint_file)
    assert message.startswith(f"first bad checkpoint: checkpoint line 2: {expected}")
    assert "1 of 3 lines fail" in message


@pytest.mark.django_db
def test_verify_checkpoints__wrong_key__every_line_named_as_signed_with_another_key(
    checkpoint_file: Path, settings: Any,
) -> None:
    # Given checkpoints signed with one key
    flag = _flag_with_history()
    _publish()
    _more_history(flag, "b")
    _publish()
    # When they are checked with another
    settings.AUDIT_CHECKPOINT_KEY = OTHER_KEY
    message, details = _verify_fails(checkpoint_file)
    # Then each line says which key signed it and which one is configured
    assert message.startswith(f"first bad checkpoint: checkpoint line 1: signed with key '{key_id(KEY.encode())}', "
                              f"not with the configured AUDIT_CHECKPOINT_KEY ({key_id(OTHER_KEY.encode())})")
    assert "2 of 2 lines fail" in message and "checkpoint line 2: signed with key" in details


@pytest.mark.django_db
@pytest.mark.parametrize(("key", "expected"), [
    ("", "AUDIT_CHECKPOINT_KEY is not set"),
    ("too-short", "AUDIT_CHECKPOINT_KEY is shorter than 32 characters"),
])
def test_verify_checkpoints__no_usable_key__says_so(checkpoint_file: Path, settings: Any, key: str, expected: str) -> None:
    _flag_with_history()
    _publish()
    settings.AUDIT_CHECKPOINT_KEY = key
    message, _ = _verify_fails(checkpoint_file)
    assert message.startswith(expected)


@pytest.mark.django_db
def test_verify_checkpoints__no_file_or_empty_file__fails_saying_nothing_anchors_the_chain(
    checkpoint_file: Path,
) -> None:
    _flag_with_history()
    assert _verify_fails(checkpoint_file)[0] == f"no checkpoint file at {checkpoint_file}"
    checkpoint_file.parent.mkdir(parents=True)
    checkpoint_file.write_text("")
    assert _verify_fails(checkpoint_file)[0].startswith("no checkpoints to compare with: nothing anchors the chain")
