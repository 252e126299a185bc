"""Shared helpers of the catalog services."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from audit.services import Actor
from flags.change_feed import bump_environments
from flags.evaluation.targeting_schema import (
    Problem,
)
from flags.models import (
    Project,
)

MAX_KEYS_PER_LIST = 10_000


class ConflictError(ValidationError):
    """The object changed since the caller read it (a stale version)."""


def _user_or_none(actor: Actor) -> AbstractBaseUser | None:
    return actor if isinstance(actor, AbstractBaseUser) else None


def _problems_to_error(field: str, problems: Sequence[Problem]) -> ValidationError:
    return ValidationError({field: [str(p) for p in problems]})


def _save_new(instance: Any, *, duplicate_field: str, duplicate_message: str) -> None:
    """Validate and insert, turning a unique-key race into the same clear error."""
    instance.full_clean()
    try:
        with transaction.atomic():
            instance.save()
    except IntegrityError as exc:
        raise ValidationError({duplicate_field: duplicate_message}) from exc


def _bump_environments(environment_ids: Iterable[int]) -> None:
    bump_environments(ids=environment_ids)


def _bump_project(project: Project) -> None:
    bump_environments(project_id=project.pk)


def _clean_key_list(keys: Iterable[Any], field: str) -> list[str]:
    cleaned: list[str] = []
    seen: set[str] = set()
    for raw in keys:
        if not isinstance(raw, str):
            raise ValidationError({field: f"{raw!r} is not a key."})
        key = raw.strip()
        if key and key not in seen:
            seen.add(key)
            cleaned.append(key)
    if len(cleaned) > MAX_KEYS_PER_LIST:
        raise ValidationError({field: f"At most {MAX_KEYS_PER_LIST} keys."})
    return cleaned
