"""Fixtures of the rollout plans' tests: every test here starts and ends with empty process
caches (snapshots, metric ids), as plans are judged from telemetry and served by the engine."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fresh_caches(fresh_caches: None) -> None:
    """Empty process caches around each test (tests/conftest.py's fresh_caches)."""
