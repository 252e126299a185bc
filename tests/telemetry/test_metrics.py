"""The metrics registry: audited create and update, refusals, and the demo's metrics."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from audit.models import AuditEvent
from telemetry.demo import DEMO_METRICS
from telemetry.models import Metric
from telemetry.services import metric_create, metric_update
from tests.factories import TEST_ACTOR, make_project

pytestmark = pytest.mark.django_db


def test_metric_create__audited_with_its_state() -> None:
    # Given a project
    project = make_project()
    # When a metric is created
    metric = metric_create(project=project, key="latency_p95", name="Latency", kind="p95", unit="ms",
                           higher_is_better=False, actor=TEST_ACTOR)
    # Then it is stored, and the audit row says what it is
    assert (metric.kind, metric.higher_is_better, metric.unit) == ("p95", False, "ms")
    event = AuditEvent.objects.get(action="metric.created")
    assert event.project_id == project.pk and event.target_id == str(metric.pk)
    assert event.after["key"] == "latency_p95" and event.after["kind"] == "p95" and event.actor_kind == "system"


@pytest.mark.parametrize("changes,field", [
    ({"key": "Not A Key"}, "key"),
    ({"kind": "median"}, "kind"),
    ({"name": ""}, "name"),
    ({"key": "dup"}, "key"),
])
def test_metric_create__invalid__refused_nothing_written(changes: dict, field: str) -> None:
    project = make_project()
    metric_create(project=project, key="dup", name="Dup", kind="count", higher_is_better=False, actor=TEST_ACTOR)
    spec = {"key": "ok_key", "name": "Name", "kind": "rate", "higher_is_better": True, **changes}
    with pytest.raises(ValidationError) as error:
        metric_create(project=project, actor=TEST_ACTOR, **spec)
    assert field in error.value.message_dict
    assert Metric.objects.count() == 1 and AuditEvent.objects.filter(action="metric.created").count() == 1


def test_metric_update__audits_before_and_after__no_op_writes_nothing__key_fixed() -> None:
    metric = metric_create(project=make_project(), key="cost", name="Cost", kind="mean", higher_is_better=True,
                           actor=TEST_ACTOR)
    # When its direction and unit change
    metric_update(metric=metric, higher_is_better=False, unit="USD", actor=TEST_ACTOR)
    # Then the audit row holds only what changed
    event = AuditEvent.objects.get(action="metric.updated")
    assert event.before == {"higher_is_better": True, "unit": ""}
    assert event.after == {"higher_is_better": False, "unit": "USD"}
    # and the same values again write nothing; the key cannot change
    metric_update(metric=metric, higher_is_better=False, actor=TEST_ACTOR)
    assert AuditEvent.objects.filter(action="metric.updated").count() == 1
    with pytest.raises(ValidationError):
        metric_update(metric=metric, key="other", actor=TEST_ACTOR)
    with pytest.raises(ValidationError):
        metric_update(metric=metric, kind="median", actor=TEST_ACTOR)
    assert Metric.objects.get(pk=metric.pk).kind == "mean"


def test_seed_metrics_command__demo_metrics_once(capsys: pytest.CaptureFixture[str]) -> None:
    make_project("support-assistant")
    call_command("seed_metrics")
    call_command("seed_metrics")
    assert set(Metric.objects.values_list("key", flat=True)) == {key for key, *_ in DEMO_METRICS}
    assert AuditEvent.objects.filter(action="metric.created").count() == len(DEMO_METRICS)
    assert "all present" in capsys.readouterr().out
    with pytest.raises(Exception, match="No project"):
        call_command("seed_metrics", "--project", "nope")
