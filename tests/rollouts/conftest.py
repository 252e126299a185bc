from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from flags.demo import seed_demo
from flags.snapshot_store import reset_store
from telemetry import ingest
from telemetry.demo import seed_demo_metrics


@pytest.fixture
def demo(db: None) -> Any:
    """The demo project: owner (editor), pm and lead (approvers), operator, auditor, admin."""
    project, _ = seed_demo()
    return project


@pytest.fixture
def catalog(demo: Any) -> Any:
    """The demo project with its metrics registry."""
    seed_demo_metrics(demo)
    return demo


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    """Empty process caches (snapshots, metric ids) around a test that evaluates or ingests."""
    reset_store(None)
    ingest.metric_ids.clear()
    yield
    reset_store(None)
    ingest.metric_ids.clear()
