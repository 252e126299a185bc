from __future__ import annotations

from typing import Any

import pytest

from flags.demo import seed_demo
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


