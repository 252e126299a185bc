"""The YAML side of flags as code: the shape of an entry, the export, and parsing a file
into entries (refusing aliases, deep nesting, `---` streams and non-JSON values) with
problems named by flag and path (`DocumentProblem`). Vocabulary: *the contract* is a flag's
metadata (the Flag model's contract fields, `CONTRACT_FIELDS`); *the document* (or *the
file*) is the YAML that carries contracts, variations and targeting, as one *entry* per flag:
a mapping whose only key is `ai_featureops_contract` (`CONTRACT_KEY`). User-visible text
still says "contracts" for the entries, as the seed article does."""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from django.core.exceptions import ValidationError
from yaml.composer import ComposerError

from flags.constants import KEY_PATTERN, BehaviorSurface, Lifetime, ValueType
from flags.models import Environment, Flag, Project

CONTRACT_KEY = "ai_featureops_contract"
# YAML key -> Flag field, in export order: the seed article's contract keys and then what our
# model adds. `owner` is the owning team (as in the seed), `owner_user` a member's username.
CONTRACT_FIELDS = {
    "flag_key": "key", "name": "name", "description": "description", "behavior_surface": "behavior_surface",
    "value_type": "value_type", "owner": "owner_team", "owner_user": "owner_user", "fallback": "fallback_variation",
    "first_audience": "first_audience", "primary_metric": "primary_metric", "guardrails": "guardrail_metrics",
    "rollback_action": "rollback_action", "cleanup_rule": "cleanup_rule", "lifetime": "lifetime",
    "review_date": "review_date", "tags": "tags", "json_schema": "json_schema",
}
YAML_NAMES = {model: yaml_key for yaml_key, model in CONTRACT_FIELDS.items()}
# What an entry may hold: the contract, then the flag's variations and per-environment targeting.
ENTRY_KEYS = (*CONTRACT_FIELDS, "variations", "targeting")
VARIATION_KEYS = ("key", "name", "value", "risk_rank", "description")
TARGETING_KEYS = ("enabled", "assignment_unit", "targets", "rules", "default_serve")
REQUIRED_FOR_NEW = ("name", "behavior_surface", "value_type", "lifetime", "variations", "fallback")
TEXT_LIMITS = {"name": 200, "description": None, "owner": 100, "first_audience": 200, "primary_metric": 100,
               "rollback_action": None, "cleanup_rule": None}
CHOICES = {"behavior_surface": BehaviorSurface.values, "value_type": ValueType.values, "lifetime": Lifetime.values}
# Keys of the seed article's `ai_featureops_contract` that belong to a rollout plan, not to the flag.
NOT_CONTRACT = {"default", "candidate", "rollout_path"}
MAX_IMPORT_CHARS = 2_000_000
MAX_DEPTH = 64
MAX_RISK_RANK = 32767
KEY = re.compile(KEY_PATTERN)


# --- export -------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A fresh copy of stored JSON, so the YAML never shares (anchors) a structure."""
    return json.loads(json.dumps(value))


def flag_entry(flag: Flag, environments: Sequence[Environment]) -> dict[str, Any]:
    """One flag as an `ai_featureops_contract` mapping (the keys in CONTRACT_FIELDS order)."""
    targetings = {t.environment_id: t for t in flag.targetings.all()}
    body = {
        "flag_key": flag.key, "name": flag.name, "description": flag.description,
        "behavior_surface": flag.behavior_surface, "value_type": flag.value_type, "owner": flag.owner_team,
        "owner_user": flag.owner_user.get_username() if flag.owner_user_id else None,
        "fallback": flag.fallback_variation.key, "first_audience": flag.first_audience,
        "primary_metric": flag.primary_metric, "guardrails": list(flag.guardrail_metrics),
        "rollback_action": flag.rollback_action, "cleanup_rule": flag.cleanup_rule, "lifetime": flag.lifetime,
        "review_date": flag.review_date, "tags": sorted(tag.name for tag in flag.tags.all()),
        "json_schema": _plain(flag.json_schema),
        "variations": [{"key": v.key, "name": v.name, "value": _plain(v.value), "risk_rank": v.risk_rank,
                        "description": v.description} for v in flag.variations.all()],
        "targeting": {
            env.key: {"enabled": t.enabled, "assignment_unit": t.assignment_unit, "targets": _plain(t.targets),
                      "rules": _plain(t.rules), "default_serve": _plain(t.default_serve)}
            for env in environments if (t := targetings.get(env.pk)) is not None
        },
    }
    return {CONTRACT_KEY: body}


def flags_for_entries(project: Project, keys: Sequence[str] | None = None) -> list[Flag]:
    """The project's flags (or those of `keys`) with everything their entries show, read at once."""
    flags = (Flag.objects.filter(project=project).select_related("fallback_variation", "owner_user")
             .prefetch_related("tags", "variations", "targetings").order_by("key"))
    return list(flags.filter(key__in=list(keys)) if keys is not None else flags)


def export_contracts(*, project: Project, flag_keys: Sequence[str] = ()) -> str:
    """The document of the project's flags (or of `flag_keys`): one entry when exactly one flag
    is asked for, a list otherwise. Unknown keys raise ValidationError naming them."""
    flags = flags_for_entries(project, list(dict.fromkeys(flag_keys)) or None)
    missing = sorted(set(flag_keys) - {flag.key for flag in flags})
    if missing:
        raise ValidationError(f"No flag {', '.join(missing)} in project {project.key}.")
    environments = list(project.environments.order_by("sort_order", "key"))
    documents = [flag_entry(flag, environments) for flag in flags]
    header = (f"# Flag contracts of project {project.key}, exported from FeatureOps Console.\n"
              f"# Preview an import: manage.py import_contracts FILE --project {project.key} "
              "--actor USERNAME --reason TEXT --dry-run\n")
    content = documents[0] if len(set(flag_keys)) == 1 else documents
    return header + yaml.safe_dump(content, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)


# --- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentProblem:
    """What is wrong, where: `flag` is the flag key (or "#2", the second entry of the file,
    when it has no usable key; "" for the file as a whole), `path` the place in its entry."""

    flag: str
    path: str
    message: str

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.flag, self.path) if part)
        return f"{where}: {self.message}" if where else self.message


def join_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _structure_problem(value: Any) -> str | None:
    """Aliases make one structure appear in many places (and can make a tiny file enormous);
    deep nesting makes every later walk costly. Both are refused before anything else."""
    seen: set[int] = set()
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep"
        if id(item) in seen:
            return "YAML anchors and aliases (& and *) are not supported: write each value out"
        seen.add(id(item))
        stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return None


def json_problem(value: Any) -> str | None:
    """Stored values are plain JSON: string keys, no dates, no NaN or infinity."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if any(not isinstance(k, str) for k in item):
                return "mapping keys must be strings (quote them)"
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            return "not plain JSON: no NaN or infinity"
        elif isinstance(item, datetime.date):
            return f"not plain JSON: {item.isoformat()} was read as a date (quote it)"
        elif item is not None and not isinstance(item, str | int | float | bool):
            return f"not plain JSON: {item!r}"
    return None


def parse_document(text: str) -> tuple[list[tuple[str, dict[str, Any]]], list[DocumentProblem]]:
    """The entries of a file as (label, body) pairs, and what is wrong with its shape."""
    if len(text) > MAX_IMPORT_CHARS:
        return [], [DocumentProblem("", "", f"The file is larger than {MAX_IMPORT_CHARS:,} characters.")]
    try:
        loaded = yaml.safe_load(text)
    except ComposerError as exc:
        if "expected a single document" in str(exc):
            return [], [DocumentProblem("", "", "One YAML document per file: put several contracts in a list "
                                                "(“- ai_featureops_contract: …”), not a “---” stream.")]
        return [], [_yaml_problem(exc)]
    except yaml.YAMLError as exc:
        return [], [_yaml_problem(exc)]
    except RecursionError:
        return [], [DocumentProblem("", "", f"Not valid YAML: nested more than {MAX_DEPTH} levels deep.")]
    except ValueError as exc:  # e.g. an impossible date such as 2026-13-01
        return [], [DocumentProblem("", "", f"Not valid YAML: {exc}.")]
    if loaded is None:
        return [], [DocumentProblem("", "", "The file is empty: paste or upload at least one contract.")]
    structure = _structure_problem(loaded)
    if structure:
        return [], [DocumentProblem("", "", structure)]
    if isinstance(loaded, dict):
        loaded = [loaded]
    if not isinstance(loaded, list):
        return [], [DocumentProblem("", "", f"Expected “{CONTRACT_KEY}:” or a list of them.")]
    entries, problems, seen = [], [], set()
    for index, item in enumerate(loaded):
        label = f"#{index + 1}"
        if not isinstance(item, dict) or set(item) != {CONTRACT_KEY}:
            extra = sorted(map(str, set(item) - {CONTRACT_KEY})) if isinstance(item, dict) else []
            problems.append(DocumentProblem(label, "", f"Each contract is a mapping whose only key is “{CONTRACT_KEY}”"
                                            + (f" (found {', '.join(extra)})." if extra else ".")))
            continue
        body = item[CONTRACT_KEY]
        if not isinstance(body, dict):
            problems.append(DocumentProblem(label, CONTRACT_KEY, "must be a mapping of contract fields"))
            continue
        key = body.get("flag_key")
        if not isinstance(key, str) or not KEY.match(key):
            problems.append(DocumentProblem(label, "flag_key", "required: a lowercase key such as support_tool_mode"))
            continue
        if key in seen:
            problems.append(DocumentProblem(key, "flag_key", "appears twice in the file"))
            continue
        seen.add(key)
        entries.append((key, body))
    return entries, problems


def _yaml_problem(exc: yaml.YAMLError) -> DocumentProblem:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return DocumentProblem("", where, f"Not valid YAML: {problem}")


