from __future__ import annotations

from typing import Any

import pytest

from flags.demo import seed_demo


@pytest.fixture
def demo(db: None) -> Any:
    """The demo project: owner (editor), pm and lead (approvers), operator, auditor, admin."""
    project, _ = seed_demo()
    return project
