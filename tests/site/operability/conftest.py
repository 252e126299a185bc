"""Fixtures of the operability tests: empty process caches around every test, and an SDK key
of the demo's production."""

from __future__ import annotations

import pytest

from audit.services import SystemActor
from flags import services
from flags.demo import seed_demo
from flags.models import Environment


@pytest.fixture(autouse=True)
def _fresh_caches(fresh_caches: None) -> None:
    """Every test here starts and ends with empty process caches (snapshots, metric ids)."""


@pytest.fixture
def sdk_key(db: None) -> str:
    project, _ = seed_demo()
    production = Environment.objects.get(project=project, key="production")
    return services.sdk_key_create(environment=production, name="ops-tests", actor=SystemActor("tests"))[1]
