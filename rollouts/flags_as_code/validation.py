"""Validation of one entry of the document against the project (`Checker`, with what it
reads of the project once: `Catalog`): every field of the contract, the variations and the
targeting normalised the way the services store it, every problem collected with its path,
before anything is written. Vocabulary: *the contract* is a flag's metadata (the Flag model's
contract fields); *the document* (or *the file*) is the YAML that carries contracts,
variations and targeting, one *entry* (`ai_featureops_contract:`) per flag."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from flags.constants import Role, ValueType
from flags.evaluation.targeting_schema import referenced_segments, validate_rules, validate_serve, validate_targets
from flags.models import Environment, Flag, Project
from flags.validators import validate_json_schema_document, validate_variation_value
from rollouts.flags_as_code.document import (
    CHOICES,
    CONTRACT_FIELDS,
    ENTRY_KEYS,
    KEY,
    MAX_RISK_RANK,
    NOT_CONTRACT,
    REQUIRED_FOR_NEW,
    TARGETING_KEYS,
    TEXT_LIMITS,
    VARIATION_KEYS,
    DocumentProblem,
    flags_for_entries,
    join_path,
    json_problem,
)


@dataclass
class Catalog:
    """What validation needs to know about the project, read once."""

    project: Project
    environments: dict[str, Environment]
    segments: set[str]
    owners: set[str]
    flags: dict[str, Flag]


def load_catalog(project: Project, keys: Sequence[str]) -> Catalog:
    owner_roles = [role for role in Role.values if role != Role.AUDITOR]
    owners = set(get_user_model().objects.filter(memberships__project=project, memberships__role__in=owner_roles)
                 .values_list("username", flat=True))
    return Catalog(project=project,
                   environments={env.key: env for env in project.environments.order_by("sort_order", "key")},
                   segments=set(project.segments.values_list("key", flat=True)), owners=owners,
                   flags={flag.key: flag for flag in flags_for_entries(project, keys)})


class Checker:
    """Normalises one entry the way the services store it, collecting problems by path.
    A field that fails keeps its raw value, so the diff still shows what was asked."""

    def __init__(self, label: str, body: dict[str, Any], catalog: Catalog) -> None:
        self.label, self.body, self.catalog = label, body, catalog
        self.flag = catalog.flags.get(label)
        self.existing_keys = [v.key for v in self.flag.variations.all()] if self.flag else []
        self.problems: list[DocumentProblem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(DocumentProblem(self.label, path, message))

    def run(self) -> tuple[dict[str, Any], list[dict[str, Any]] | None, dict[str, dict[str, Any]]]:
        body = self.body
        for name in sorted(set(body) - set(ENTRY_KEYS), key=str):
            hint = ("a rollout-plan field of the seed article, not part of the flag contract; remove it"
                    if name in NOT_CONTRACT else f"unknown field (known: {', '.join(ENTRY_KEYS)})")
            self.problem(str(name), hint)
        if self.flag is None:
            for name in REQUIRED_FOR_NEW:
                if name not in body:
                    self.problem(name, "required for a new flag")
        data = {name: self.contract_field(name, body[name]) for name in CONTRACT_FIELDS if name in body}
        value_type = data.get("value_type") if self.flag is None else self.flag.value_type
        if self.flag is not None and "value_type" in data and data["value_type"] != self.flag.value_type:
            self.problem("value_type", f"cannot change ({self.flag.value_type}): it would invalidate every variation")
        schema = data["json_schema"] if "json_schema" in data else (self.flag.json_schema if self.flag else None)
        if schema is not None and value_type in ValueType.values and value_type != ValueType.JSON:
            self.problem("json_schema", "only JSON flags take a JSON Schema")
            schema = None
        variations = self.variations(body["variations"], value_type, schema) if "variations" in body else None
        keys = self.variation_keys(variations)
        if "json_schema" in data and self.flag is not None and schema is not None:
            self.check_kept_values(self.flag, variations, schema)
        if "fallback" in data and isinstance(data["fallback"], str) and data["fallback"] not in keys:
            listed = ", ".join(sorted(keys)) or "none listed"
            self.problem("fallback", f"“{data['fallback']}” is not one of the variations ({listed})")
        targeting = self.targeting(body["targeting"], keys) if "targeting" in body else {}
        return data, variations, targeting

    def contract_field(self, name: str, value: Any) -> Any:
        if name in TEXT_LIMITS:
            value = "" if value is None else value
            limit = TEXT_LIMITS[name]
            if not isinstance(value, str):
                self.problem(name, "must be text")
            elif name == "name" and not value.strip():
                self.problem(name, "must not be empty")
            elif limit and len(value) > limit:
                self.problem(name, f"at most {limit} characters")
            return value
        if name in CHOICES:
            if value not in CHOICES[name]:
                self.problem(name, f"{value!r} is not one of: {', '.join(CHOICES[name])}")
            return value
        if name == "owner_user":
            if value is not None and (not isinstance(value, str) or value not in self.catalog.owners):
                self.problem(name, f"{value!r} is not a member of {self.catalog.project.key} who may own flags "
                                   "(a username with a role other than auditor)")
            return value
        if name in ("guardrails", "tags"):
            return self.key_list(name, value)
        if name == "review_date":
            return self.review_date(value)
        if name == "json_schema":
            if value is None:
                return None
            problem = json_problem(value)
            try:
                if problem:
                    raise ValidationError(problem)
                validate_json_schema_document(value)
            except ValidationError as exc:
                self.problem(name, exc.messages[0])
            return value
        if name == "fallback" and not isinstance(value, str):
            self.problem(name, "must be a variation key")
        return value

    def key_list(self, name: str, value: Any) -> Any:
        value = [] if value is None else value
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.problem(name, "must be a list of names")
            return value
        if name == "tags":
            cleaned = sorted({item.strip().lower() for item in value if item.strip()})
            for tag in cleaned:
                if len(tag) > 50:
                    self.problem(name, f"“{tag[:20]}…” is longer than 50 characters")
            return cleaned
        return list(dict.fromkeys(item.strip() for item in value if item.strip()))

    def review_date(self, value: Any) -> Any:
        if value is None or (isinstance(value, datetime.date) and not isinstance(value, datetime.datetime)):
            return value
        if isinstance(value, str):
            try:
                return datetime.date.fromisoformat(value)
            except ValueError:
                pass
        self.problem("review_date", "must be a date such as 2026-03-31 (or null)")
        return value

    def variations(self, value: Any, value_type: Any, schema: Any) -> list[dict[str, Any]] | None:
        if not isinstance(value, list) or not value:
            self.problem("variations", "must be a non-empty list of variations")
            return None
        checked: list[dict[str, Any]] = []
        for index, item in enumerate(value):
            key = item.get("key") if isinstance(item, dict) else None
            path = f"variations.{key}" if isinstance(key, str) and KEY.match(key) else f"variations[{index}]"
            if not isinstance(item, dict):
                self.problem(path, "must be a mapping with key, name, value, risk_rank and description")
                continue
            for name in sorted(set(item) - set(VARIATION_KEYS), key=str):
                self.problem(join_path(path, str(name)), f"unknown field (known: {', '.join(VARIATION_KEYS)})")
            if not isinstance(key, str) or not KEY.match(key):
                self.problem(join_path(path, "key"), "required: a lowercase key such as read_only")
                continue
            if any(v["key"] == key for v in checked):
                self.problem(join_path(path, "key"), "appears twice")
                continue
            if key not in self.existing_keys and "value" not in item:
                self.problem(join_path(path, "value"), "required for a new variation")
            for name in ("name", "description"):
                if name in item and not isinstance(item[name] if item[name] is not None else "", str):
                    self.problem(join_path(path, name), "must be text")
            if isinstance(item.get("name"), str) and len(item["name"]) > 200:
                self.problem(join_path(path, "name"), "at most 200 characters")
            rank = item.get("risk_rank", 0)
            if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= MAX_RISK_RANK:
                self.problem(join_path(path, "risk_rank"), "must be a whole number from 0 (safest) up")
            if "value" in item and value_type in ValueType.values:
                self.check_value(join_path(path, "value"), item["value"], value_type, schema)
            checked.append({name: ("" if item[name] is None and name in ("name", "description") else item[name])
                            for name in VARIATION_KEYS if name in item})
        if self.flag is not None:
            missing = [key for key in self.existing_keys if key not in {c["key"] for c in checked}]
            if missing:
                self.problem("variations", f"{', '.join(missing)} missing from the file: an import never deletes "
                                           "variations (delete them on the flag page, or list them)")
        return checked

    def check_value(self, path: str, value: Any, value_type: str, schema: Any) -> None:
        problem = json_problem(value)
        if problem:
            self.problem(path, problem)
            return
        try:
            validate_variation_value(value_type=value_type, json_schema=schema, value=value)
        except ValidationError as exc:
            hint = (" Quote it: YAML reads on/off/yes/no as true/false."
                    if value_type == ValueType.STRING and isinstance(value, bool) else "")
            self.problem(path, exc.messages[0] + hint)

    def check_kept_values(self, flag: Flag, variations: list[dict[str, Any]] | None, schema: Any) -> None:
        """A new schema must also accept the values the file leaves as they are."""
        given = {v["key"] for v in variations or [] if "value" in v}
        for variation in flag.variations.all():
            if variation.key not in given:
                self.check_value(f"variations.{variation.key}.value", variation.value, flag.value_type, schema)

    def variation_keys(self, variations: list[dict[str, Any]] | None) -> set[str]:
        return {v["key"] for v in variations or []} | set(self.existing_keys)

    def targeting(self, value: Any, keys: set[str]) -> dict[str, dict[str, Any]]:
        if not isinstance(value, dict):
            self.problem("targeting", "must map environment keys to targeting")
            return {}
        checked = {}
        for env_key, state in value.items():
            path = f"targeting.{env_key}"
            if env_key not in self.catalog.environments:
                self.problem(path, f"no environment {env_key!r} in {self.catalog.project.key} "
                                   f"(known: {', '.join(self.catalog.environments)})")
                continue
            if not isinstance(state, dict):
                self.problem(path, f"must be a mapping of {', '.join(TARGETING_KEYS)}")
                continue
            for name in sorted(set(state) - set(TARGETING_KEYS), key=str):
                self.problem(join_path(path, str(name)), f"unknown field (known: {', '.join(TARGETING_KEYS)})")
            if "enabled" in state and not isinstance(state["enabled"], bool):
                self.problem(join_path(path, "enabled"), "must be true or false")
            unit = state.get("assignment_unit", "targetingKey")
            if not isinstance(unit, str) or not unit.strip() or len(unit) > 100:
                self.problem(join_path(path, "assignment_unit"), "must name a context attribute, e.g. accountId")
            for name in ("targets", "rules", "default_serve"):
                if name in state and json_problem(state[name]):
                    self.problem(join_path(path, name), json_problem(state[name]) or "")
            problems = []
            if "targets" in state:
                problems += validate_targets(state["targets"], keys, join_path(path, "targets"))
            if "rules" in state:
                problems += validate_rules(state["rules"], keys, join_path(path, "rules"))
                unknown = referenced_segments(state["rules"]) - self.catalog.segments
                if unknown:
                    self.problem(join_path(path, "rules"), f"unknown segment(s): {', '.join(sorted(unknown))}")
            if "default_serve" in state:
                problems += validate_serve(state["default_serve"], keys, join_path(path, "default_serve"))
            for problem in problems:
                self.problem(problem.path, problem.message)
            checked[env_key] = {name: state[name] for name in TARGETING_KEYS if name in state}
        return checked


