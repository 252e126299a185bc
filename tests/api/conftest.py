"""The management API's fixtures: tokens for the demo's people and service tokens, and a client
that sends one."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from flags.models import Project
from flags.services.access_tokens import personal_token_create, service_token_create


class ApiClient:
    """The Django test client with a bearer token on every request, JSON bodies."""

    def __init__(self, client: Client, token: str) -> None:
        self.client, self.token = client, token

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(headers or {})}

    def get(self, path: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
        return self.client.get("/api/v1" + path, params or {}, headers=self._headers(headers))

    def send(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return getattr(self.client, method.lower())("/api/v1" + path, body, content_type="application/json",
                                                    headers=self._headers(headers))

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self.send("POST", path, body if body is not None else {}, headers)

    def patch(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return self.send("PATCH", path, body, headers)

    def delete(self, path: str, headers: dict[str, str] | None = None) -> Any:
        return self.send("DELETE", path, None, headers)


ALL_SCOPES = ("read", "write", "approve", "operate")


@pytest.fixture
def personal_api(demo: Project) -> Callable[..., ApiClient]:
    """An API client with a personal token of a demo user (all scopes unless told)."""

    def make(username: str, scopes: tuple[str, ...] = ALL_SCOPES) -> ApiClient:
        user = get_user_model().objects.get(username=username)
        _, raw = personal_token_create(user=user, name=f"{username} test", scopes=scopes, actor=user)
        return ApiClient(Client(), raw)

    return make


@pytest.fixture
def service_api(demo: Project) -> Callable[..., ApiClient]:
    """An API client with a service token of a project, created by its admin."""

    def make(scopes: tuple[str, ...], project: Project | None = None, created_by: str = "admin") -> ApiClient:
        admin = get_user_model().objects.get(username=created_by)
        _, raw = service_token_create(project=project or demo, name="ci", scopes=scopes, actor=admin,
                                      expires_at=timezone.now() + datetime.timedelta(days=30))
        return ApiClient(Client(), raw)

    return make
