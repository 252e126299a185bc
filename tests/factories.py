"""Small builders for tests: a project with environments, and flags of each value type."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, TypeVar

from django.utils import timezone

from audit.services import SystemActor
from flags import services
from flags.constants import BehaviorSurface, Lifetime, Role, ValueType
from flags.models import Flag, Project

TEST_ACTOR = SystemActor("tests")
T = TypeVar("T")


def make_project(key: str = "proj", *, governed_production: bool = True) -> Project:
    project = services.project_create(key=key, name=key.title(), actor=TEST_ACTOR)
    services.environment_create(project=project, key="development", name="Development", sort_order=0,
                                actor=TEST_ACTOR)
    services.environment_create(project=project, key="production", name="Production", sort_order=1,
                                is_governed=governed_production, actor=TEST_ACTOR)
    return project


def make_string_flag(project: Project, key: str = "tool_mode", **extra: Any) -> Flag:
    spec: dict[str, Any] = {
        "name": key.replace("_", " "),
        "behavior_surface": BehaviorSurface.AGENT_TOOLS,
        "value_type": ValueType.STRING,
        "lifetime": Lifetime.RELEASE,
        "variations": [
            {"key": "none", "value": "none", "risk_rank": 0},
            {"key": "read_only", "value": "read_only", "risk_rank": 1},
            {"key": "write", "value": "write", "risk_rank": 4},
        ],
        "fallback_variation_key": "none",
        # a complete contract, so the flag may be turned on in a governed environment
        "owner_team": "platform",
        "review_date": timezone.localdate() + datetime.timedelta(days=60),
        "cleanup_rule": "Remove the branch once released.",
    }
    spec.update(extra)
    actor = spec.pop("actor", TEST_ACTOR)
    return services.flag_create(project=project, key=key, actor=actor, **spec)


PROFILE_SCHEMA = {
    "type": "object",
    "required": ["prompt", "temperature"],
    "additionalProperties": False,
    "properties": {"prompt": {"type": "string"}, "temperature": {"type": "number", "minimum": 0, "maximum": 2}},
}


def make_json_flag(project: Project, key: str = "profile") -> Flag:
    return services.flag_create(
        project=project, key=key, name="Profile", behavior_surface=BehaviorSurface.AI_PROFILE,
        value_type=ValueType.JSON, json_schema=PROFILE_SCHEMA, lifetime=Lifetime.EXPERIMENT,
        variations=[{"key": "baseline", "value": {"prompt": "v3", "temperature": 0.2}},
                    {"key": "candidate", "value": {"prompt": "v4", "temperature": 0.3}, "risk_rank": 1}],
        fallback_variation_key="baseline", actor=TEST_ACTOR,
    )


def make_boolean_flag(project: Project, key: str = "kill") -> Flag:
    return services.flag_create(
        project=project, key=key, name="Kill", behavior_surface=BehaviorSurface.FALLBACK_MODE,
        value_type=ValueType.BOOLEAN, lifetime=Lifetime.KILL_SWITCH,
        variations=[{"key": "off", "value": False}, {"key": "on", "value": True, "risk_rank": 1}],
        fallback_variation_key="off", actor=TEST_ACTOR,
    )


def grant(project: Project, user: Any, role: Role) -> None:
    services.membership_grant(project=project, user=user, role=role, actor=TEST_ACTOR)



def as_approved(write: Callable[[], T]) -> T:
    """Test set-up (a Given): perform `write` as if an approved change request had carried
    exactly the served states it produces. The first attempt learns them from the guard's
    refusal (nothing is written); the second runs under an authorization for those hashes,
    the mechanism the apply path uses. Audit rows are written as usual."""
    from django.db import transaction

    from flags.served_state.guard import Authorization, GovernanceError, governed_write

    try:
        with transaction.atomic():
            return write()
    except GovernanceError as refused:
        hashes = {r.after.key: r.after.hash for r in refused.refusals}
    with transaction.atomic(), governed_write(authorization=Authorization(hashes, "test set-up")):
        return write()


def set_up_targeting(targeting: Any, **changes: Any) -> Any:
    """Test set-up: a flag's targeting in a governed environment, as if approved."""
    return as_approved(lambda: services.targeting_update(targeting=targeting, actor=TEST_ACTOR,
                                                         reason="test set-up", **changes))
