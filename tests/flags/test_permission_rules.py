"""The permission rules services ask (flags/permissions.py): a person is judged by their roles;
a system job passes only where its service says it carries out a decision already taken."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from audit.services import SystemActor
from flags import permissions
from flags.permissions import Refused


def test_require__operator_and_editor__only_the_operator_may_start_incident_mode(demo) -> None:
    users = get_user_model().objects
    # Given the demo's operator and its editor
    operator, editor = users.get(username="operator"), users.get(username="owner")
    # When each is asked for by the rule, Then the operator passes and the editor is refused
    assert permissions.START_INCIDENT.require(operator, demo) is None
    with pytest.raises(Refused, match="Incident mode needs the operator role"):
        permissions.START_INCIDENT.require(editor, demo)


def test_require__system_job__refused_unless_the_service_allows_it(demo) -> None:
    job = SystemActor("some-job")
    # When a system job meets a rule its service did not open to system jobs, Then it is refused
    with pytest.raises(Refused) as refused:
        permissions.APPROVE.require(job, demo)
    assert refused.value.code == "forbidden"
    # and where the service says the job carries out a decision already taken, it passes
    assert permissions.APPLY.require(job, demo, system=True) is None
