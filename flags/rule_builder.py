"""The rule builder: targeting rules and segment rules as rows of form fields, and back.

A rule in the builder is a group of fields named after its place in the list (i: rule, j: clause):

    rule-<i>-id              hidden; the stored rule's id, kept (targeting rules only)
    rule-<i>-description     optional text
    rule-<i>-serve           a variation key or SPLIT (targeting rules only)
    rule-<i>-split-<key>     the percentage of a variation when the rule serves a split
    rule-<i>-clause-<j>-attribute, -op, -values (one value per line), -kind (text | number |
    boolean: how equals / in / not_in read their values), -negate, -segments (in_segment)

`drafts_from_data` reads the posted fields into drafts (plain strings, nothing checked),
`rules_from_drafts` turns drafts into the stored rules of flags/evaluation/targeting_schema.py
with the problems it found per field, `drafts_from_rules` goes the other way (refusing, with
`NotRepresentable`, what the builder cannot show faithfully: that stays in the JSON view), and
`apply_op` is what the editor's buttons do to the drafts. Nothing here touches the database.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from flags.evaluation.targeting_schema import (
    NUMERIC_OPERATORS,
    OPERATORS,
    SEGMENT_OPERATOR,
    SEMVER_OPERATORS,
    SPLIT_TOTAL,
)

SPLIT = "__split__"
TYPED_OPERATORS = frozenset({"equals", "in", "not_in"})  # their values may be text, numbers or true/false
KINDS = (("text", "as text"), ("number", "as numbers"), ("boolean", "as true / false"))
MAX_BUILDER_RULES = 50  # past this the JSON view is the better tool (and a form stays under Django's field cap)
MAX_BUILDER_CLAUSES = 20
BUILDER, JSON_VIEW = "builder", "json"

# What the values box takes, per operator (the editor's script shows the hint of the chosen one).
VALUE_HINTS: dict[str, str] = {
    "equals": "One value.",
    **{op: "One value per line." for op in ("in", "not_in", "starts_with", "ends_with", "contains")},
    "matches": "One regular expression per line (Python syntax); any may match.",
    **{op: "One number per line; any may match." for op in NUMERIC_OPERATORS},
    **{op: "One version per line (1.4.0); any may match." for op in SEMVER_OPERATORS},
    SEGMENT_OPERATOR: "",
}

_INDEX = re.compile(r"^rule-(\d{1,3})-(?:clause-(\d{1,3})-)?")
_INTEGER = re.compile(r"^[+-]?\d+$")


class NotRepresentable(Exception):
    """Rules the builder cannot show without changing them: they stay in the JSON view."""


@dataclass
class ClauseDraft:
    attribute: str = ""
    op: str = "in"
    values: str = ""
    kind: str = "text"
    negate: bool = False
    segments: list[str] = field(default_factory=list)


@dataclass
class RuleDraft:
    id: str = ""
    description: str = ""
    serve: str = ""
    split: dict[str, str] = field(default_factory=dict)
    clauses: list[ClauseDraft] = field(default_factory=list)


def rule_field(position: int, part: str) -> str:
    return f"rule-{position}-{part}"


def clause_field(position: int, clause: int, part: str) -> str:
    return f"rule-{position}-clause-{clause}-{part}"


def posted_indices(data: Iterable[str]) -> list[tuple[int, list[int]]]:
    """The rule indices named in `data`'s keys, in order, each with its clause indices."""
    found: dict[int, set[int]] = {}
    for name in data:
        match = _INDEX.match(name)
        if match:
            clauses = found.setdefault(int(match.group(1)), set())
            if match.group(2) is not None:
                clauses.add(int(match.group(2)))
    return [(index, sorted(clauses)) for index, clauses in sorted(found.items())]


def _checked(value: Any) -> bool:
    # As Django's CheckboxInput reads a posted checkbox.
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.lower(), bool(value))
    return bool(value)


def drafts_from_data(data: Mapping[str, Any], variation_keys: Iterable[str] = ()) -> list[RuleDraft]:
    """The builder's fields as posted, in order; nothing is checked here."""
    keys = list(variation_keys)

    def text(name: str) -> str:
        value = data.get(name, "")
        return value if isinstance(value, str) else ""

    def values(name: str) -> list[str]:
        listed = data.getlist(name) if hasattr(data, "getlist") else data.get(name) or []
        return [value for value in listed if isinstance(value, str)]

    drafts = []
    for index, clause_indices in posted_indices(data):
        drafts.append(RuleDraft(
            id=text(rule_field(index, "id")), description=text(rule_field(index, "description")),
            serve=text(rule_field(index, "serve")),
            split={key: text(rule_field(index, f"split-{key}")) for key in keys},
            clauses=[ClauseDraft(
                attribute=text(clause_field(index, j, "attribute")), op=text(clause_field(index, j, "op")),
                values=text(clause_field(index, j, "values")), kind=text(clause_field(index, j, "kind")) or "text",
                negate=_checked(data.get(clause_field(index, j, "negate"), "")),
                segments=values(clause_field(index, j, "segments")),
            ) for j in clause_indices],
        ))
    return drafts


def builder_initial(drafts: list[RuleDraft]) -> dict[str, Any]:
    """The drafts as form initial values, numbered from 0 in order."""
    initial: dict[str, Any] = {}
    for i, draft in enumerate(drafts):
        initial[rule_field(i, "id")] = draft.id
        initial[rule_field(i, "description")] = draft.description
        initial[rule_field(i, "serve")] = draft.serve
        for key, percent in draft.split.items():
            initial[rule_field(i, f"split-{key}")] = percent
        for j, clause in enumerate(draft.clauses):
            initial.update({
                clause_field(i, j, "attribute"): clause.attribute, clause_field(i, j, "op"): clause.op,
                clause_field(i, j, "values"): clause.values, clause_field(i, j, "kind"): clause.kind,
                clause_field(i, j, "negate"): clause.negate, clause_field(i, j, "segments"): list(clause.segments),
            })
    return initial


# --- drafts → stored rules ----------------------------------------------------------------------


def format_percent(percent: Decimal) -> str:
    return format(percent.normalize(), "f") if percent else "0"


def split_total_text(percents: Iterable[str]) -> str:
    """"adds up to 95 % — 5 % short", as the editor's script writes it while one types."""
    total = Decimal(0)
    for text in percents:
        try:
            percent = Decimal(text.strip())
        except (InvalidOperation, AttributeError):
            continue
        if percent.is_finite():
            total += percent
    total = total.quantize(Decimal("0.001"))
    if total == 100:
        return "adds up to 100 %"
    gap = abs(100 - total)
    return f"adds up to {format_percent(total)} % — {format_percent(gap)} % {'short' if total < 100 else 'too much'}"


def _number(text: str) -> int | float | None:
    if _INTEGER.match(text):
        return int(text) if len(text) <= 30 else None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _clause_values(position: int, j: int, clause: ClauseDraft, errors: dict[str, list[str]]) -> list[Any]:
    name = clause_field(position, j, "values")
    lines = [line.strip() for line in clause.values.splitlines() if line.strip()]
    if not lines:
        errors.setdefault(name, []).append("Give at least one value, one per line.")
        return []
    kind = "number" if clause.op in NUMERIC_OPERATORS else clause.kind if clause.op in TYPED_OPERATORS else "text"
    if kind == "number":
        parsed: list[Any] = []
        for line in lines:
            number = _number(line)
            if number is None:
                errors.setdefault(name, []).append(f"“{line}” is not a number.")
            parsed.append(line if number is None else number)
        return parsed
    if kind == "boolean":
        wrong = [line for line in lines if line.lower() not in ("true", "false")]
        if wrong:
            errors.setdefault(name, []).append(f"“{wrong[0]}” is neither true nor false.")
        return [line.lower() == "true" if line.lower() in ("true", "false") else line for line in lines]
    return lines


def _serve(position: int, draft: RuleDraft, variation_keys: list[str],
           errors: dict[str, list[str]]) -> dict[str, Any] | None:
    name = rule_field(position, "serve")
    if draft.serve != SPLIT:
        if not draft.serve:
            errors.setdefault(name, []).append("Choose what this rule serves.")
            return None
        return {"variation": draft.serve}
    split = []
    for key in variation_keys:
        text = (draft.split.get(key) or "").strip()
        if not text:
            continue
        try:
            percent = Decimal(text)
        except InvalidOperation:
            percent = Decimal("NaN")
        if not percent.is_finite() or not 0 <= percent <= 100 or percent != percent.quantize(Decimal("0.001")):
            errors.setdefault(rule_field(position, f"split-{key}"), []).append(
                "A percentage from 0 to 100, with at most three decimals.")
            continue
        if percent:
            split.append({"variation": key, "weight": int(percent * 1000)})
    total = sum(bucket["weight"] for bucket in split)
    if total != SPLIT_TOTAL and not any(rule_field(position, f"split-{key}") in errors for key in variation_keys):
        errors.setdefault(name, []).append(f"The split {split_total_text(draft.split.values())}: it must add up "
                                           "to 100 %.")
    return {"split": split}


def rules_from_drafts(drafts: list[RuleDraft], *, variation_keys: Iterable[str] = (), serves: bool = True
                      ) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The stored rules the drafts describe, and what is wrong with them by field name (the
    drafts' fields numbered 0, 1, 2… in order, as the editor renders them).

    A wrong value stays in the rules as typed (the JSON view shows it), so the result is always
    a list of rules; the errors say whether it may be saved."""
    keys = list(variation_keys)
    errors: dict[str, list[str]] = {}
    rules = []
    for position, draft in enumerate(drafts):
        rule: dict[str, Any] = {}
        if serves and draft.id.strip():
            rule["id"] = draft.id.strip()
        if draft.description.strip():
            rule["description"] = draft.description.strip()
        clauses = []
        for j, clause in enumerate(draft.clauses):
            if clause.op == SEGMENT_OPERATOR:
                if not clause.segments:
                    errors.setdefault(clause_field(position, j, "segments"), []).append("Pick at least one segment.")
                stored: dict[str, Any] = {"op": clause.op, "values": list(clause.segments)}
            else:
                if not clause.attribute.strip():
                    errors.setdefault(clause_field(position, j, "attribute"), []).append(
                        "Name a context attribute (plan, region, accountId…).")
                stored = {"attribute": clause.attribute.strip(), "op": clause.op,
                          "values": _clause_values(position, j, clause, errors)}
            if clause.negate:
                stored["negate"] = True
            clauses.append(stored)
        rule["clauses"] = clauses
        if serves:
            serve = _serve(position, draft, keys, errors)
            if serve is not None:
                rule["serve"] = serve
        rules.append(rule)
    return rules, errors


def _normalized(rule: Any) -> Any:
    """A rule as the builder would write it, to tell a rule left as it was from one edited."""
    if not isinstance(rule, dict):
        return rule
    shaped = {name: value for name, value in rule.items() if not (name == "description" and value == "")}
    if isinstance(rule.get("clauses"), list):
        shaped["clauses"] = [
            {name: value for name, value in clause.items()
             if not (name == "negate" and value is False) and not (name == "attribute" and clause.get("op") == SEGMENT_OPERATOR)}
            if isinstance(clause, dict) else clause
            for clause in rule["clauses"]
        ]
    return json.dumps(shaped, sort_keys=True)


def keep_unchanged(rules: list[dict[str, Any]], stored: Any) -> list[Any]:
    """The built rules, with each one the builder did not change replaced by the stored rule it
    came from, as stored: a clause saved as {"negate": false} stays so, and the change's diff
    (which compares clauses as written) does not report a rule nobody touched."""
    originals = {_normalized(rule): rule for rule in stored} if isinstance(stored, list) else {}
    return [originals.get(_normalized(rule), rule) for rule in rules]


# --- stored rules → drafts ----------------------------------------------------------------------


def _format_number(value: int | float) -> str:
    return json.dumps(value)


def _text_value(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise NotRepresentable(f"{where}: {json.dumps(value)} is not text.")
    if not value.strip() or value != value.strip() or "\n" in value or "\r" in value:
        raise NotRepresentable(f"{where}: the value {json.dumps(value)} is empty, has a line break or spaces at "
                               "its ends.")
    return value


def _clause_draft(clause: Any, where: str) -> ClauseDraft:
    if not isinstance(clause, dict):
        raise NotRepresentable(f"{where} is not an object.")
    unknown = set(clause) - {"attribute", "op", "values", "negate"}
    if unknown:
        raise NotRepresentable(f"{where} has fields the builder does not know ({', '.join(sorted(unknown))}).")
    op, values, negate = clause.get("op"), clause.get("values", []), clause.get("negate", False)
    if op not in OPERATORS:
        raise NotRepresentable(f"{where} has an unknown operator ({json.dumps(op)}).")
    if not isinstance(values, list) or not isinstance(negate, bool):
        raise NotRepresentable(f"{where}: values must be a list and negate true or false.")
    if op == SEGMENT_OPERATOR:
        return ClauseDraft(op=op, negate=negate, segments=[_text_value(v, where) for v in values])
    attribute = clause.get("attribute", "")
    if not isinstance(attribute, str) or "\n" in attribute:
        raise NotRepresentable(f"{where}: the attribute is not a name.")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if op in NUMERIC_OPERATORS or (op in TYPED_OPERATORS and values and numbers):
        if not numbers:
            raise NotRepresentable(f"{where}: {OPERATORS[op]} compares numbers, and some values are not.")
        return ClauseDraft(attribute=attribute, op=op, negate=negate, kind="number",
                           values="\n".join(_format_number(v) for v in values))
    if op in TYPED_OPERATORS and values and all(isinstance(v, bool) for v in values):
        return ClauseDraft(attribute=attribute, op=op, negate=negate, kind="boolean",
                           values="\n".join("true" if v else "false" for v in values))
    return ClauseDraft(attribute=attribute, op=op, negate=negate,
                       values="\n".join(_text_value(v, where) for v in values))


def _serve_draft(draft: RuleDraft, serve: Any, variation_keys: list[str], where: str) -> None:
    if isinstance(serve, dict) and set(serve) == {"variation"} and serve["variation"] in variation_keys:
        draft.serve = serve["variation"]
        return
    if isinstance(serve, dict) and set(serve) == {"split"} and isinstance(serve["split"], list):
        draft.serve = SPLIT
        for bucket in serve["split"]:
            if (not isinstance(bucket, dict) or set(bucket) != {"variation", "weight"}
                    or bucket["variation"] not in variation_keys or bucket["variation"] in draft.split
                    or type(bucket["weight"]) is not int):
                raise NotRepresentable(f"{where} serves a split the builder cannot show ({json.dumps(bucket)}).")
            draft.split[bucket["variation"]] = format_percent(Decimal(bucket["weight"]) / 1000)
        return
    raise NotRepresentable(f"{where} serves something that is not a variation of this flag or a split "
                           f"({json.dumps(serve)}).")


def drafts_from_rules(rules: Any, *, variation_keys: Iterable[str] = (), serves: bool = True) -> list[RuleDraft]:
    """The builder's drafts showing `rules`, or NotRepresentable saying what it cannot show."""
    keys = list(variation_keys)
    if not isinstance(rules, list):
        raise NotRepresentable("The rules must be a JSON list.")
    if len(rules) > MAX_BUILDER_RULES:
        raise NotRepresentable(f"The builder shows up to {MAX_BUILDER_RULES} rules; these are {len(rules)}.")
    allowed = {"id", "description", "clauses", "serve"} if serves else {"description", "clauses"}
    drafts = []
    for number, rule in enumerate(rules, start=1):
        where = f"Rule {number}"
        if not isinstance(rule, dict):
            raise NotRepresentable(f"{where} is not an object.")
        unknown = set(rule) - allowed
        if unknown:
            raise NotRepresentable(f"{where} has fields the builder does not know ({', '.join(sorted(unknown))}).")
        rule_id, description = rule.get("id", ""), rule.get("description", "")
        if not isinstance(rule_id, str) or not isinstance(description, str) or "\n" in description:
            raise NotRepresentable(f"{where}: its id and description must be text on one line.")
        clauses = rule.get("clauses", [])
        if not isinstance(clauses, list) or len(clauses) > MAX_BUILDER_CLAUSES:
            raise NotRepresentable(f"{where}: clauses must be a list of at most {MAX_BUILDER_CLAUSES}.")
        draft = RuleDraft(id=rule_id, description=description,
                          clauses=[_clause_draft(clause, f"{where}, clause {j}") for j, clause in
                                   enumerate(clauses, start=1)] or [ClauseDraft()])
        if serves and "serve" in rule:
            _serve_draft(draft, rule["serve"], keys, where)
        drafts.append(draft)
    return drafts


# --- the editor's buttons -----------------------------------------------------------------------

_OP = re.compile(r"^(?:(add-rule)|(remove)-rule-(\d{1,3})|move-rule-(\d{1,3})-(up|down)|add-clause-(\d{1,3})"
                 r"|remove-clause-(\d{1,3})-(\d{1,3}))$")


class UnknownOp(ValueError):
    pass


def fresh_rule_id(drafts: list[RuleDraft]) -> str:
    taken = {draft.id for draft in drafts}
    number = len(drafts) + 1
    while f"rule-{number}" in taken:
        number += 1
    return f"rule-{number}"


def apply_op(op: str, drafts: list[RuleDraft], *, serves: bool = True) -> tuple[list[RuleDraft], str, str]:
    """Do what a builder button asks to the drafts. Answers the drafts, the id of the element
    to focus next (the new row's first field; after a removal, the next control), and a
    problem to show ("" when none). An index past the list (a stale page) changes nothing."""
    match = _OP.match(op)
    if not match:
        raise UnknownOp(op)
    drafts = list(drafts)
    add_rule, remove_rule, move_rule, direction = match.group(1), match.group(3), match.group(4), match.group(5)
    add_clause, clause_rule, clause = match.group(6), match.group(7), match.group(8)
    if add_rule:
        if len(drafts) >= MAX_BUILDER_RULES:
            return drafts, "rule-editor-add-rule", (f"The builder holds up to {MAX_BUILDER_RULES} rules: use the "
                                                    "JSON view for more.")
        drafts.append(RuleDraft(id=fresh_rule_id(drafts) if serves else "", clauses=[ClauseDraft()]))
        return drafts, f"id_{rule_field(len(drafts) - 1, 'description')}", ""
    if remove_rule is not None:
        position = int(remove_rule)
        if position < len(drafts):
            del drafts[position]
        if position < len(drafts):
            return drafts, f"id_{rule_field(position, 'description')}", ""
        return drafts, "rule-editor-add-rule", ""
    if move_rule is not None:
        position = int(move_rule)
        target = position - 1 if direction == "up" else position + 1
        if not (0 <= position < len(drafts) and 0 <= target < len(drafts)):
            return drafts, "rule-editor-add-rule", ""
        drafts[position], drafts[target] = drafts[target], drafts[position]
        # The moved rule's same button, unless it reached the end it moved towards.
        at_end = target == 0 if direction == "up" else target == len(drafts) - 1
        other = "down" if direction == "up" else "up"
        return drafts, f"rule-{target}-move-{other if at_end else direction}", ""
    if add_clause is not None:
        position = int(add_clause)
        if position >= len(drafts):
            return drafts, "rule-editor-add-rule", ""
        if len(drafts[position].clauses) >= MAX_BUILDER_CLAUSES:
            return drafts, f"rule-{position}-add-clause", f"A rule holds up to {MAX_BUILDER_CLAUSES} clauses."
        drafts[position].clauses.append(ClauseDraft())
        return drafts, f"id_{clause_field(position, len(drafts[position].clauses) - 1, 'attribute')}", ""
    position, index = int(clause_rule), int(clause)
    if position >= len(drafts):
        return drafts, "rule-editor-add-rule", ""
    clauses = drafts[position].clauses
    if index < len(clauses) and len(clauses) > 1:
        del clauses[index]
    if index < len(clauses):
        following = clauses[index]
        part = "op" if following.op == SEGMENT_OPERATOR else "attribute"
        return drafts, f"id_{clause_field(position, index, part)}", ""
    return drafts, f"rule-{position}-add-clause", ""
