from __future__ import annotations

from typing import Any

import pytest

from telemetry.demo import seed_demo_metrics


@pytest.fixture
def catalog(demo: Any) -> Any:
    """The demo project with its metrics registry."""
    seed_demo_metrics(demo)
    return demo


