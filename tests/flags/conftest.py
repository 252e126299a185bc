"""Fixtures of the flag catalog's tests: a second project nobody from the demo belongs to."""

from __future__ import annotations

import pytest

from flags import services
from flags.models import Project
from tests.factories import TEST_ACTOR
from tests.flags.support import string_flag


@pytest.fixture
def other_project(demo: Project) -> Project:
    """A second project nobody from the demo is a member of, with one flag and one segment."""
    project = services.project_create(key="other-project", name="Other project", actor=TEST_ACTOR)
    services.environment_create(project=project, key="development", name="Development", actor=TEST_ACTOR)
    string_flag(project, "secret_rollout")
    services.segment_create(project=project, key="secret_segment", name="Secret segment", actor=TEST_ACTOR)
    return project

