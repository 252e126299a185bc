"""Fixtures for telemetry: the demo catalog with its metrics, SDK keys, and a client that
posts event batches through the project's real WSGI application."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from audit.services import SystemActor
from flags import services
from flags.demo import seed_demo
from flags.models import Environment, Flag
from telemetry.demo import seed_demo_metrics
from tests.ofrep_client import WsgiResponse, call

ACTOR = SystemActor("tests")
PROFILE = "support_assistant_profile"
TOOL_MODE = "support_agent_tool_mode"


@pytest.fixture(autouse=True)
def _fresh_caches(fresh_caches: None) -> None:
    """Every telemetry test starts and ends with empty process caches."""


@pytest.fixture
def keys(db: None) -> dict[str, str]:
    """Raw SDK keys of the demo's production and development environments."""
    project, _ = seed_demo()
    seed_demo_metrics(project)
    raw = {}
    for env_key in ("production", "development"):
        environment = Environment.objects.get(project=project, key=env_key)
        raw[env_key] = services.sdk_key_create(environment=environment, name="tests", actor=ACTOR)[1]
    return raw


def ago(**delta: float) -> str:
    return (timezone.now() - datetime.timedelta(**delta)).isoformat()


def exposure(unit: str, variant: str = "baseline_v3", *, served: str | None = None, flag: str = PROFILE,
             time: str | None = None) -> dict[str, Any]:
    return {"kind": "exposure", "flag": flag, "variant": variant, "served": served or variant, "unit": unit,
            "time": time or ago(seconds=30)}


def outcome(unit: str, metric: str, value: float, *, time: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"kind": "outcome", "metric": metric, "value": value, "unit": unit, "time": time or ago(seconds=20),
            **extra}


@pytest.fixture
def post(keys: dict[str, str]) -> Callable[..., WsgiResponse]:
    def send(events: Any, *, batch_id: str | None = None, key: str | None = None, body: Any = None,
             headers: dict[str, str] | None = None) -> WsgiResponse:
        payload = body if body is not None else {"batch_id": batch_id or uuid.uuid4().hex, "events": events}
        return call("POST", "/api/v1/events", body=payload,
                    headers=headers if headers is not None else {"Authorization": f"Bearer {key or keys['production']}"})

    return send


def flag_id(key: str = PROFILE) -> int:
    return Flag.objects.get(key=key).pk


def environment_id(key: str = "production") -> int:
    return Environment.objects.get(project__key="support-assistant", key=key).pk
