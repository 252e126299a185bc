"""Guardrail evaluation (rollouts/plans/guardrails.py, pure): green, amber (too few samples) or red
from the numbers; thresholds out of range refused, and never judged as infinity."""

from __future__ import annotations

from typing import Any

import pytest

from rollouts.plans.guardrails import AMBER, GREEN, RED, evaluate_guardrail, guardrail_problems
from tests.rollouts.plans.support import (
    BASELINE,
    CANDIDATE,
    LATENCY,
    LATENCY_MIN_20,
)

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(("guardrail", "candidate", "baseline", "status"), [
    (LATENCY, (300, 60), (100, 60), RED),
    (LATENCY, (110, 60), (100, 60), GREEN),
    (LATENCY, (300, 10), (100, 60), AMBER),
    (LATENCY, (300, 60), (100, 10), AMBER),
    ({"metric": "latency_p95", "kind": "absolute_max", "threshold": 250, "min_samples": 0}, (300, 1), (None, 0), RED),
    ({"metric": "latency_p95", "kind": "absolute_min", "threshold": 50, "min_samples": 0}, (60, 1), (None, 0), GREEN),
    ({"metric": "latency_p95", "kind": "relative_min", "threshold": 0.9, "min_samples": 5}, (80, 9), (100, 9), RED),
])
def test_guardrail__numbers__green_amber_red(guardrail: dict[str, Any], candidate: tuple, baseline: tuple,
                                             status: str) -> None:
    def variant(p95: float | None, count: int) -> dict[str, Any]:
        return {"exposures": count, "metrics": {"latency_p95": {"count": count, "p95": p95}}}

    result = evaluate_guardrail(guardrail, evidence={CANDIDATE: variant(*candidate), BASELINE: variant(*baseline)},
                                baseline=BASELINE, candidate=CANDIDATE, metric_kind="p95")
    assert result.status == status
    assert result.candidate_samples == candidate[1]


def test_guardrail__huge_threshold__refused_and_never_judged_as_infinity() -> None:
    assert any("at most" in p for p in guardrail_problems({**LATENCY_MIN_20, "threshold": 1e308}))
    judged = evaluate_guardrail({**LATENCY_MIN_20, "threshold": 1e300}, baseline="b", candidate="c", metric_kind="p95",
                                evidence={"b": {"metrics": {"latency_p95": {"p95": 1e300, "count": 50}}},
                                          "c": {"metrics": {"latency_p95": {"p95": 5.0, "count": 50}}}})
    assert judged.status == AMBER and judged.limit is None and "out of range" in judged.message

