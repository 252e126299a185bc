"""Helpers of the catalog services' tests."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from flags.models import Flag, Targeting


def targeting_of(flag: Flag, environment_key: str = "development") -> Targeting:
    return Targeting.objects.get(flag=flag, environment__key=environment_key)


def error_fields(exc: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return set(exc.value.error_dict) if hasattr(exc.value, "error_dict") else set()

