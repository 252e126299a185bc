"""The demo's metrics: the primary and guardrail metrics the seed flags name."""

from __future__ import annotations

from audit.services import Actor, SystemActor
from flags.models import Project
from telemetry.constants import MetricKind
from telemetry.models import Metric
from telemetry.services import metric_create

# key, name, kind, higher is better, unit
DEMO_METRICS = (
    ("resolved_without_escalation", "Resolved without escalation", MetricKind.RATE, True, "%"),
    ("latency_p95", "Latency (p95)", MetricKind.P95, False, "ms"),
    ("correction_rate", "Correction rate", MetricKind.RATE, False, "%"),
    ("citation_failure_rate", "Citation failure rate", MetricKind.RATE, False, "%"),
    ("estimated_cost_per_case", "Estimated cost per case", MetricKind.MEAN, False, "USD"),
    ("approval_rate", "Approval rate", MetricKind.RATE, True, "%"),
    ("denial_rate", "Denial rate", MetricKind.RATE, False, "%"),
    ("incident_signal", "Incident signals", MetricKind.COUNT, False, ""),
    ("recovery_rate", "Recovery rate", MetricKind.RATE, True, "%"),
    ("support_complaint_rate", "Support complaint rate", MetricKind.RATE, False, "%"),
)


def seed_demo_metrics(project: Project, *, actor: Actor | None = None) -> list[Metric]:
    """Create the demo metrics the project lacks (idempotent); returns those created."""
    actor = actor or SystemActor("seed-metrics")
    existing = set(Metric.objects.filter(project=project).values_list("key", flat=True))
    return [metric_create(project=project, key=key, name=name, kind=kind, higher_is_better=higher, unit=unit,
                          actor=actor)
            for key, name, kind, higher, unit in DEMO_METRICS if key not in existing]
