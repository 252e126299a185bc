"""Validation of typed variation values and JSON Schemas, shared by services and forms."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from django.core.exceptions import ValidationError
from jsonschema.validators import validator_for

from flags.constants import ValueType


def validate_json_schema_document(schema: Any) -> None:
    """A flag's JSON Schema must itself be a valid schema document."""
    if not isinstance(schema, dict):
        raise ValidationError("A JSON Schema must be a JSON object.")
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValidationError(f"Not a valid JSON Schema: {exc.message}") from exc


def validate_variation_value(*, value_type: str, json_schema: dict | None, value: Any) -> None:
    """Refuse a value that does not have the flag's type or breaks its JSON Schema."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError("Values must be plain JSON: no NaN, Infinity or other non-JSON values.") from exc
    if value_type == ValueType.BOOLEAN:
        if not isinstance(value, bool):
            raise ValidationError(f"A boolean flag needs true or false, not {value!r}.")
    elif value_type == ValueType.STRING:
        if not isinstance(value, str):
            raise ValidationError(f"A string flag needs a string value, not {value!r}.")
    elif value_type == ValueType.NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"A number flag needs a number, not {value!r}.")
    elif value_type == ValueType.JSON:
        if not isinstance(value, dict | list):
            raise ValidationError("A JSON flag needs a JSON object or array.")
        if json_schema:
            cls = validator_for(json_schema, default=jsonschema.Draft202012Validator)
            errors = sorted(cls(json_schema).iter_errors(value), key=lambda e: list(e.absolute_path))
            if errors:
                messages = []
                for error in errors[:5]:
                    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                    messages.append(f"{where}: {error.message}")
                raise ValidationError("Value does not match the flag's JSON Schema: " + "; ".join(messages))
    else:
        raise ValidationError(f"Unknown value type {value_type!r}.")
