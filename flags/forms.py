"""Console forms. They parse and shape input; every rule about what is valid lives in the
services, whose errors are shown beside the matching field (see `add_service_errors`)."""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from audit.validators import TextLimitValidator
from flags.constants import KEY_HELP, BehaviorSurface, Lifetime, Role, ValueType
from flags.evaluation.targeting_schema import OPERATORS, SEGMENT_OPERATOR, SPLIT_TOTAL
from flags.models import Flag, Project, Segment, Targeting, Variation, key_validator
from flags.rule_builder import (
    BUILDER,
    JSON_VIEW,
    KINDS,
    MAX_BUILDER_CLAUSES,
    MAX_BUILDER_RULES,
    SPLIT,
    VALUE_HINTS,
    NotRepresentable,
    RuleDraft,
    apply_op,
    builder_initial,
    clause_field,
    drafts_from_data,
    drafts_from_rules,
    keep_unchanged,
    posted_indices,
    rule_field,
    rules_from_drafts,
    split_total_text,
)

MAX_JSON_CHARS = 200_000


class LimitedTextField(forms.CharField):
    """Free text under its audit.constants.TEXT_LIMITS entry: a longer text is refused beside
    the field, with the count, in the services' words. No HTML maxlength: a browser cuts pasted
    text at it without a word, the silent truncation the limit is there to prevent."""

    def __init__(self, *, limit: str, rows: int = 2, **kwargs: Any) -> None:
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": rows}))
        super().__init__(**kwargs)
        self.validators.append(TextLimitValidator(limit))


def add_service_errors(form: forms.Form, exc: ValidationError) -> None:
    """Attach a service's ValidationError to the form: beside the field it names (or the
    form field `service_field_for` maps it to, with the message it answers when it answers a
    (field, message) pair), at the top of the form otherwise."""
    if hasattr(exc, "error_dict"):
        for field, errors in exc.error_dict.items():
            for error in errors:
                messages = error.messages if hasattr(error, "messages") else [str(error)]
                for message in messages:
                    mapper = getattr(form, "service_field_for", None)
                    target = mapper(field, message) if mapper else field
                    if isinstance(target, tuple):  # a mapper may also reword the message for its field
                        target, message = target
                    if target in form.fields:
                        form.add_error(target, message)
                    else:
                        form.add_error(None, f"{field.replace('_', ' ')}: {message}")
    else:
        for message in exc.messages:
            form.add_error(None, message)


def parse_json_text(text: str, *, field_label: str = "value") -> Any:
    if len(text) > MAX_JSON_CHARS:
        raise ValidationError(f"The {field_label} is too long (at most {MAX_JSON_CHARS:,} characters).")
    def refuse_constant(name: str) -> None:
        raise ValidationError(f"Not valid JSON: {name} is not a JSON value.")

    try:
        value = json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from exc
    except (ValueError, RecursionError) as exc:  # integers past 4,300 digits, nesting past the stack
        raise ValidationError(f"The {field_label} is too large or too deeply nested.") from exc
    try:
        encoded = json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"The {field_label} contains an unpaired surrogate (\\ud800–\\udfff).") from exc
    if b"\\u0000" in encoded or b"\x00" in encoded:
        raise ValidationError(f"The {field_label} contains a NUL character.")
    return value


def parse_typed_value(value_type: str, text: str) -> Any:
    """Turn the text typed for a variation into a value of the flag's type."""
    text = text.strip() if value_type != ValueType.STRING else text
    if value_type == ValueType.BOOLEAN:
        if text.lower() in {"true", "false"}:
            return text.lower() == "true"
        raise ValidationError(f"A boolean flag needs true or false, not “{text}”.")
    if value_type == ValueType.NUMBER:
        try:
            number = Decimal(text)
        except InvalidOperation as exc:
            raise ValidationError(f"“{text}” is not a number.") from exc
        if not number.is_finite():
            raise ValidationError("The number must be finite.")
        return int(number) if number == number.to_integral_value() and "." not in text and "e" not in text.lower() else float(number)
    if value_type == ValueType.JSON:
        return parse_json_text(text)
    if not text:
        raise ValidationError("A string variation needs a value.")
    return text


def format_value(value_type: str, value: Any) -> str:
    if value_type == ValueType.JSON:
        return json.dumps(value, indent=2, ensure_ascii=False)
    if value_type == ValueType.BOOLEAN:
        return "true" if value else "false"
    return str(value)


def parse_rules_text(text: str) -> list:
    """A rules field (targeting's or a segment's): a JSON list, or none when left blank."""
    text = text.strip()
    rules = parse_json_text(text, field_label="rules") if text else []
    if not isinstance(rules, list):
        raise ValidationError("Rules must be a JSON list.")
    return rules


def split_list(text: str) -> list[str]:
    return [item.strip() for chunk in text.splitlines() for item in chunk.split(",") if item.strip()]


# --- the rule editor ----------------------------------------------------------------------------

_RULE_PATH = re.compile(r"^rules\[(\d+)\]\.(\w+)(?:\[(\d+)\])?(?:\.(\w+)(?:\[(\d+)\])?)?[^:]*: (.*)$", re.S)
_UNKNOWN_SEGMENTS = re.compile(r"^(?:rules: )?[Uu]nknown segment\(s\): (.+?)\.?$")


class RuleEditorForm(forms.Form):
    """A form with the rule editor: its rules are edited in a builder (one group of fields per
    rule and clause, named as flags/rule_builder.py says) or in a JSON view of the same list.

    One source of truth per submit: the posted `rules_mode`. "builder": the rules are read
    from the builder's fields and the `rules` text is ignored; "json" (or no `rules_mode`, as
    scripts posting the older form send): the rules are the `rules` JSON text and builder
    fields are ignored. The editor's buttons convert between the two views on the server
    (flags/rule_editor_views.py), so what a person switches to always shows what they typed."""

    rules_serve = True  # targeting rules serve a variation or a split; a segment's rules do not
    rules_mode = forms.ChoiceField(choices=((BUILDER, "builder"), (JSON_VIEW, "JSON")), required=False,
                                   widget=forms.HiddenInput)

    def setup_rule_editor(self, *, stored_rules: Any, variation_keys: list[str], segment_keys: list[str]) -> None:
        self.stored_rules = stored_rules
        self.variation_keys = variation_keys
        self.segment_keys = segment_keys
        self.editor_focus = ""
        self.rules_changed = False
        if self.is_bound:
            self.rule_positions = posted_indices(self.data)
            self._add_rule_fields()
            return
        try:
            drafts = drafts_from_rules(stored_rules or [], variation_keys=variation_keys, serves=self.rules_serve)
        except NotRepresentable:
            self.show_rules(JSON_VIEW, [], self.initial.get("rules", ""))
        else:
            self.show_rules(BUILDER, drafts, self.initial.get("rules", ""))

    def mode(self) -> str:
        if self.is_bound:
            return BUILDER if self.data.get("rules_mode") == BUILDER else JSON_VIEW
        return self.initial.get("rules_mode", JSON_VIEW)

    def show_rules(self, mode: str, drafts: list[RuleDraft], rules_text: str) -> None:
        """Show these drafts (or this JSON text) in an unbound form: what an editor button answers."""
        for name in [name for name in self.fields if name.startswith("rule-")]:
            del self.fields[name]
        self.initial = {name: value for name, value in self.initial.items() if not name.startswith("rule-")}
        self.initial.update(builder_initial(drafts), rules=rules_text, rules_mode=mode)
        self.rule_positions = [(i, list(range(len(draft.clauses)))) for i, draft in enumerate(drafts)]
        self._add_rule_fields()

    @property
    def value_hints_json(self) -> str:
        return json.dumps(VALUE_HINTS)

    def editor_op(self, op: str, data: Any) -> None:
        """Do what one of the editor's buttons asks (`op`) to the rules posted in `data`, and show
        the result in this unbound form. Raises rule_builder.UnknownOp for a button it does not know.
        `rules_changed` then says whether the rules mean something else than before (a rule or a
        clause removed, rules reordered): a page with a live preview refreshes it then, and only then."""
        drafts = drafts_from_data(data, self.variation_keys)
        posted_mode = BUILDER if data.get("rules_mode") == BUILDER else JSON_VIEW
        self.rules_changed = False
        if (op == "switch-to-builder" and posted_mode == BUILDER) or (op != "switch-to-builder"
                                                                      and posted_mode == JSON_VIEW):
            # The view already shown (a stale page, a double press): show it again as it is.
            self.show_rules(posted_mode, drafts, data.get("rules", ""))
            if op not in ("switch-to-json", "switch-to-builder"):
                apply_op(op, [], serves=self.rules_serve)  # still refuse an op that does not exist
            return
        if op == "switch-to-json":
            rules, _ = rules_from_drafts(drafts, variation_keys=self.variation_keys, serves=self.rules_serve)
            rules = keep_unchanged(rules, self.stored_rules)
            self.show_rules(JSON_VIEW, [], json.dumps(rules, indent=2, ensure_ascii=False) if rules else "")
            self.editor_focus = "rule-editor-view-json"
        elif op == "switch-to-builder":
            text = data.get("rules", "")
            try:
                drafts = drafts_from_rules(parse_rules_text(text), variation_keys=self.variation_keys,
                                           serves=self.rules_serve)
            except (ValidationError, NotRepresentable) as exc:
                self.show_rules(JSON_VIEW, [], text)
                problem = " ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
                self.editor_error("rules", f"{problem} Keep editing the JSON, or fix it to use the builder.")
                self.editor_focus = "id_rules"
            else:
                self.show_rules(BUILDER, drafts, text)
                self.editor_focus = "rule-editor-view-builder"
        else:
            drafts, self.editor_focus, problem = apply_op(op, drafts, serves=self.rules_serve)
            self.rules_changed = op.startswith(("remove-", "move-"))
            self.show_rules(BUILDER, drafts, "")
            if problem:
                self.editor_error("rules", problem)

    def editor_error(self, name: str, message: str) -> None:
        """An error beside a field of an unbound form (which has nothing cleaned to drop)."""
        self.cleaned_data = getattr(self, "cleaned_data", {})
        self.add_error(name, message)

    def _add_rule_fields(self) -> None:
        keys = self.variation_keys
        for n, (i, clause_indices) in enumerate(self.rule_positions, start=1):
            if self.rules_serve:
                self.fields[rule_field(i, "id")] = forms.CharField(required=False, widget=forms.HiddenInput)
            self.fields[rule_field(i, "description")] = LimitedTextField(
                limit="description", required=False, label=f"Rule {n}: description", widget=forms.TextInput)
            if self.rules_serve:
                self.fields[rule_field(i, "serve")] = forms.ChoiceField(
                    required=False, label=f"Rule {n}: serves", choices=[
                        ("", "— choose what it serves —"), *((key, key) for key in keys), (SPLIT, "a percentage split…")])
                for key in keys:
                    self.fields[rule_field(i, f"split-{key}")] = forms.CharField(
                        required=False, label=f"Rule {n}: {key} %",
                        widget=forms.NumberInput(attrs={"step": "0.001", "min": "0", "max": "100"}))
            for m, j in enumerate(clause_indices, start=1):
                where = f"Rule {n}, clause {m}"
                name = clause_field(i, j, "segments")
                chosen = (self.data.getlist(name) if self.is_bound and hasattr(self.data, "getlist")
                          else self.initial.get(name) or [])
                segments = [*self.segment_keys, *(key for key in chosen if key not in self.segment_keys)]
                self.fields.update({
                    # No max_length (a browser would cut pasted text at it): the service names a bad attribute.
                    clause_field(i, j, "attribute"): forms.CharField(required=False, label=f"{where}: attribute"),
                    clause_field(i, j, "op"): forms.ChoiceField(choices=list(OPERATORS.items()), initial="in",
                                                                label=f"{where}: operator"),
                    clause_field(i, j, "values"): forms.CharField(
                        required=False, strip=False, label=f"{where}: values", widget=forms.Textarea(attrs={"rows": 2})),
                    clause_field(i, j, "kind"): forms.ChoiceField(choices=KINDS, required=False, initial="text",
                                                                  label=f"{where}: values are read"),
                    clause_field(i, j, "negate"): forms.BooleanField(required=False, label=f"{where}: negate"),
                    name: forms.MultipleChoiceField(
                        required=False, widget=forms.CheckboxSelectMultiple, label=f"{where}: segments",
                        choices=[(key, key if key in self.segment_keys else f"{key} (no such segment)")
                                 for key in segments]),
                })

    def clean_builder(self, data: dict[str, Any]) -> None:
        """In builder mode, the rules the builder's fields describe, or errors beside them."""
        if self.mode() != BUILDER:
            return
        positions = self.rule_positions
        if len(positions) > MAX_BUILDER_RULES or any(len(clauses) > MAX_BUILDER_CLAUSES for _, clauses in positions):
            self.add_error(None, f"The builder holds up to {MAX_BUILDER_RULES} rules of {MAX_BUILDER_CLAUSES} "
                                 "clauses: use the JSON view.")
            return
        if [i for i, _ in positions] != list(range(len(positions))) or any(
                clauses != list(range(len(clauses))) for _, clauses in positions):
            self.add_error(None, "The rule editor's fields are out of order: reload the page and try again.")
            return
        drafts = drafts_from_data(self.data, self.variation_keys)
        rules, errors = rules_from_drafts(drafts, variation_keys=self.variation_keys, serves=self.rules_serve)
        for name, messages in errors.items():
            if name in self.fields and name not in self.errors:  # the field's own check spoke first
                for message in messages:
                    self.add_error(name, message)
        data["rules"] = keep_unchanged(rules, self.stored_rules)

    def rules_field_for(self, message: str) -> str | tuple[str, str]:
        """Where a service's error about the rules goes: in builder mode, beside the rule or
        clause field its path names ("rules[1].clauses[0].values[2]: …"), worded without the path."""
        if self.mode() != BUILDER:
            return "rules"
        match = _RULE_PATH.match(message)
        if match and int(match.group(1)) < len(self.rule_positions):
            rule, part, index, sub, sub_index, text = match.groups()
            position = int(rule)
            if part == "clauses" and index is not None:
                clause = int(index)
                sub = sub or "op"
                if sub == "values" and self.data.get(clause_field(position, clause, "op")) == SEGMENT_OPERATOR:
                    sub = "segments"
                name = clause_field(position, clause, sub)
                if sub_index is not None and sub == "values":
                    text = f"value {int(sub_index) + 1}: {text}"
            else:
                name = rule_field(position, {"serve": "serve", "description": "description"}.get(part, ""))
            if name in self.fields:
                return name, text[:1].upper() + text[1:]
        unknown = _UNKNOWN_SEGMENTS.match(message)
        if unknown:
            named = {key.strip() for key in unknown.group(1).split(",")}
            for position, clauses in self.rule_positions:
                for clause in clauses:
                    name = clause_field(position, clause, "segments")
                    if named & set(self.data.getlist(name) if hasattr(self.data, "getlist") else []):
                        return name, f"Unknown segment(s): {unknown.group(1)}"
        return "rules"

    def rule_rows(self) -> list[dict[str, Any]]:
        """The builder's fields, rule by rule, for the editor's template."""
        rows = []
        count = len(self.rule_positions)
        for n, (i, clause_indices) in enumerate(self.rule_positions, start=1):
            serve = self[rule_field(i, "serve")] if self.rules_serve else None
            splits = [(key, self[rule_field(i, f"split-{key}")]) for key in self.variation_keys] if serve else []
            clauses = []
            for m, j in enumerate(clause_indices, start=1):
                op = self[clause_field(i, j, "op")]
                clauses.append({
                    "number": m, "index": j, "op": op, "op_value": op.value() or "in",
                    "hint": VALUE_HINTS.get(op.value() or "in", ""),
                    **{part: self[clause_field(i, j, part)]
                       for part in ("attribute", "values", "kind", "negate", "segments")},
                })
            rows.append({
                "number": n, "index": i, "first": n == 1, "last": n == count, "clauses": clauses,
                "single_clause": len(clauses) == 1,
                "id": self[rule_field(i, "id")] if serve else None, "description": self[rule_field(i, "description")],
                "serve": serve, "splits": splits, "is_split": bool(serve) and serve.value() == SPLIT,
                "split_total": split_total_text(str(field.value() or "") for _, field in splits),
            })
        return rows


class KeyField(forms.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=100, validators=[key_validator], help_text=KEY_HELP, **kwargs)


class FlagContractForm(forms.Form):
    """The contract fields shared by create and edit."""

    name = forms.CharField(max_length=200)
    description = LimitedTextField(limit="description", required=False)
    behavior_surface = forms.ChoiceField(choices=BehaviorSurface.choices)
    lifetime = forms.ChoiceField(choices=Lifetime.choices)
    owner_user = forms.ModelChoiceField(queryset=get_user_model().objects.none(), required=False, label="Owner (person)")
    owner_team = forms.CharField(max_length=100, required=False, label="Owner (team)")
    review_date = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    cleanup_rule = LimitedTextField(limit="cleanup_rule", required=False)
    primary_metric = forms.CharField(max_length=100, required=False)
    guardrail_metrics = forms.CharField(required=False, help_text="Comma-separated metric keys.")
    rollback_action = LimitedTextField(limit="rollback_action", required=False)
    first_audience = forms.CharField(max_length=200, required=False)
    tags = forms.CharField(required=False, help_text="Comma-separated.")
    json_schema = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8, "class": "mono"}), required=False, label="JSON Schema",
        help_text="JSON flags only: every variation value is validated against it.",
    )

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project = project
        # Owners get edit rights on their flag: only members with a role that may change things.
        self.fields["owner_user"].queryset = (
            get_user_model().objects.filter(
                memberships__project=project, memberships__role__in=[r for r in Role.values if r != Role.AUDITOR])
            .distinct().order_by("username")
        )

    def clean_json_schema(self) -> dict | None:
        text = self.cleaned_data["json_schema"].strip()
        return parse_json_text(text, field_label="JSON Schema") if text else None

    def clean_guardrail_metrics(self) -> list[str]:
        return split_list(self.cleaned_data["guardrail_metrics"])

    def clean_tags(self) -> list[str]:
        return split_list(self.cleaned_data["tags"])

    CONTRACT_FIELDS = (
        "name", "description", "behavior_surface", "lifetime", "owner_user", "owner_team", "review_date",
        "cleanup_rule", "primary_metric", "guardrail_metrics", "rollback_action", "first_audience",
        "json_schema",
    )

    def contract(self) -> dict[str, Any]:
        """The cleaned contract fields this form has (edit forms of non-JSON flags have no schema)."""
        return {name: self.cleaned_data[name] for name in self.CONTRACT_FIELDS if name in self.fields}


class FlagCreateForm(FlagContractForm):
    key = KeyField()
    value_type = forms.ChoiceField(choices=ValueType.choices)
    fallback_key = forms.CharField(
        max_length=100, required=False, label="Fallback variation key",
        help_text="The safe default. Boolean flags get “off” (false, the fallback) and “on” (true).",
    )
    fallback_value = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "class": "mono"}), required=False, label="Fallback value",
    )

    field_order = ["key", "name", "value_type", "behavior_surface", "lifetime", "description", "fallback_key",
                   "fallback_value", "json_schema"]

    def service_field_for(self, field: str, message: str) -> str:
        # The service names the first variation's value "value"; here it is the fallback's.
        return "fallback_value" if field == "value" else field

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        value_type = data.get("value_type")
        if value_type == ValueType.BOOLEAN:
            # Boolean flags always get "off" (false, the fallback) and "on" (true): other input would be ignored.
            if (data.get("fallback_key") or "").strip() not in ("", "off"):
                self.add_error("fallback_key", "A boolean flag's fallback is “off” (false): leave this empty.")
            if (data.get("fallback_value") or "").strip() not in ("", "false"):
                self.add_error("fallback_value", "A boolean flag's fallback value is false: leave this empty "
                                                 "(true is its “on” variation).")
        if value_type and value_type != ValueType.BOOLEAN:
            if not data.get("fallback_key"):
                self.add_error("fallback_key", "Name the fallback variation.")
            else:
                try:
                    key_validator(data["fallback_key"])
                except ValidationError as exc:
                    self.add_error("fallback_key", exc)
            try:
                data["fallback_parsed"] = parse_typed_value(value_type, data.get("fallback_value", ""))
            except ValidationError as exc:
                self.add_error("fallback_value", exc)
        if value_type and value_type != ValueType.JSON and data.get("json_schema"):
            self.add_error("json_schema", "Only JSON flags take a JSON Schema.")
        return data

    def variations(self) -> tuple[list[dict[str, Any]], str]:
        if self.cleaned_data["value_type"] == ValueType.BOOLEAN:
            return [
                {"key": "off", "name": "Off", "value": False, "risk_rank": 0},
                {"key": "on", "name": "On", "value": True, "risk_rank": 1},
            ], "off"
        key = self.cleaned_data["fallback_key"]
        return [{"key": key, "value": self.cleaned_data["fallback_parsed"], "risk_rank": 0}], key


class FlagEditForm(FlagContractForm):
    fallback_variation = forms.ChoiceField(label="Fallback variation")
    version = forms.IntegerField(widget=forms.HiddenInput)

    def __init__(self, *args: Any, flag: Flag, **kwargs: Any) -> None:
        super().__init__(*args, project=flag.project, **kwargs)
        self.flag = flag
        self.fields["fallback_variation"].choices = [(v.key, v.key) for v in flag.variations.all()]
        if flag.value_type != ValueType.JSON:
            del self.fields["json_schema"]

    @classmethod
    def initial_for(cls, flag: Flag) -> dict[str, Any]:
        return {
            "name": flag.name, "description": flag.description, "behavior_surface": flag.behavior_surface,
            "lifetime": flag.lifetime, "owner_user": flag.owner_user_id, "owner_team": flag.owner_team,
            "review_date": flag.review_date, "cleanup_rule": flag.cleanup_rule,
            "primary_metric": flag.primary_metric, "guardrail_metrics": ", ".join(flag.guardrail_metrics),
            "rollback_action": flag.rollback_action, "first_audience": flag.first_audience,
            "tags": ", ".join(t.name for t in flag.tags.all()),
            "json_schema": json.dumps(flag.json_schema, indent=2, ensure_ascii=False) if flag.json_schema else "",
            "fallback_variation": flag.fallback_variation.key if flag.fallback_variation_id else "",
            "version": flag.version,
        }


class VariationForm(forms.Form):
    key = KeyField()
    name = forms.CharField(max_length=200, required=False)
    value = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "class": "mono"}), strip=False)
    description = LimitedTextField(limit="description", required=False)
    risk_rank = forms.IntegerField(min_value=0, max_value=1000, initial=0, help_text="0 is the safest.")

    def __init__(self, *args: Any, flag: Flag, variation: Variation | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flag = flag
        if variation is not None:
            del self.fields["key"]
        if flag.value_type == ValueType.BOOLEAN:
            self.fields["value"].widget = forms.Select(choices=[("false", "false"), ("true", "true")])
        elif flag.value_type in (ValueType.STRING, ValueType.NUMBER):
            self.fields["value"].widget = forms.TextInput(attrs={"class": "mono"})

    @classmethod
    def initial_for(cls, variation: Variation) -> dict[str, Any]:
        return {
            "name": variation.name, "description": variation.description, "risk_rank": variation.risk_rank,
            "value": format_value(variation.flag.value_type, variation.value),
        }

    def clean_value(self) -> Any:
        return parse_typed_value(self.flag.value_type, self.cleaned_data["value"])


class TargetingForm(RuleEditorForm):
    """Targeting of one flag in one environment. The default rule is a variation or a split
    typed as percentages; individual targets are keys per variation; rules are edited in the
    rule editor (`RuleEditorForm`: the builder, or the JSON view, as `rules_mode` says)."""

    SPLIT = SPLIT

    enabled = forms.BooleanField(required=False, label="Serving (on)")
    assignment_unit = forms.CharField(
        max_length=100, help_text="The context attribute that percentage splits bucket on (accountId, userId…).",
    )
    default_variation = forms.ChoiceField(label="Default rule serves")
    rules = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 14, "class": "mono", "spellcheck": "false"}), required=False,
        label="Rules (JSON)", help_text="A JSON list of rules, in order: the first whose clauses all match serves.",
    )
    version = forms.IntegerField(widget=forms.HiddenInput)

    def __init__(self, *args: Any, targeting: Targeting, variations: list[Variation], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.targeting = targeting
        self.variations = variations
        self.fields["default_variation"].choices = [(v.key, v.key) for v in variations] + [
            (self.SPLIT, "a percentage split…")
        ]
        for variation in variations:
            self.fields[f"split_{variation.key}"] = forms.DecimalField(
                required=False, min_value=0, max_value=100, decimal_places=3, label=f"{variation.key} %",
                widget=forms.NumberInput(attrs={"step": "0.001"}),
            )
            self.fields[f"targets_{variation.key}"] = forms.CharField(
                required=False, label=f"Serve “{variation.key}” to", widget=forms.Textarea(attrs={"rows": 2}),
                help_text="Assignment-unit keys, one per line or comma-separated.",
            )
        segment_keys = list(Segment.objects.filter(project_id=targeting.flag.project_id).order_by("key")
                            .values_list("key", flat=True))
        self.setup_rule_editor(stored_rules=targeting.rules, variation_keys=[v.key for v in variations],
                               segment_keys=segment_keys)

    @classmethod
    def initial_for(cls, targeting: Targeting, variations: list[Variation]) -> dict[str, Any]:
        initial: dict[str, Any] = {
            "enabled": targeting.enabled, "assignment_unit": targeting.assignment_unit,
            "rules": json.dumps(targeting.rules, indent=2, ensure_ascii=False) if targeting.rules else "",
            "version": targeting.version,
        }
        serve = targeting.default_serve
        if "split" in serve:
            initial["default_variation"] = cls.SPLIT
            for bucket in serve["split"]:
                initial[f"split_{bucket['variation']}"] = Decimal(bucket["weight"]) / 1000
        else:
            initial["default_variation"] = serve.get("variation")
        for target in targeting.targets:
            initial[f"targets_{target['variation']}"] = "\n".join(target["values"])
        return initial

    def service_field_for(self, field: str, message: str) -> str | tuple[str, str]:
        if field == "rules":
            return self.rules_field_for(message)
        if field == "default_serve":
            return "default_variation"
        if field == "targets":
            # "targets[1].values: …" names the second non-empty target list built in clean().
            match = re.match(r"targets\[(\d+)\]", message)
            targets = self.cleaned_data.get("targets") or []
            if match and int(match.group(1)) < len(targets):
                return f"targets_{targets[int(match.group(1))]['variation']}"
        return field

    def split_fields(self) -> list[forms.BoundField]:
        return [self[f"split_{v.key}"] for v in self.variations]

    def default_split_total(self) -> str:
        return split_total_text(str(field.value() or "") for field in self.split_fields())

    def target_fields(self) -> list[forms.BoundField]:
        return [self[f"targets_{v.key}"] for v in self.variations]

    def clean_rules(self) -> list:
        return parse_rules_text(self.cleaned_data["rules"]) if self.mode() == JSON_VIEW else []

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        self.clean_builder(data)
        if data.get("default_variation") == self.SPLIT:
            split = []
            for variation in self.variations:
                percent = data.get(f"split_{variation.key}")
                if percent:
                    split.append({"variation": variation.key, "weight": int(percent * 1000)})
            total = sum(bucket["weight"] for bucket in split)
            if total != SPLIT_TOTAL:
                self.add_error("default_variation", f"The split adds up to {Decimal(total) / 1000:g} %, not 100 %.")
            data["default_serve"] = {"split": split}
        elif data.get("default_variation"):
            data["default_serve"] = {"variation": data["default_variation"]}
        targets = []
        for variation in self.variations:
            keys = split_list(data.get(f"targets_{variation.key}") or "")
            if keys:
                targets.append({"variation": variation.key, "values": keys})
        data["targets"] = targets
        return data

    def changes(self) -> dict[str, Any]:
        return {
            "enabled": self.cleaned_data["enabled"],
            "assignment_unit": self.cleaned_data["assignment_unit"].strip(),
            "default_serve": self.cleaned_data["default_serve"],
            "targets": self.cleaned_data["targets"],
            "rules": self.cleaned_data["rules"],
        }


class SegmentForm(RuleEditorForm):
    """A segment: included and excluded keys, and attribute rules edited in the rule editor
    (`RuleEditorForm`; a segment's rules are clauses only, and it matches when any rule does)."""

    rules_serve = False

    key = KeyField()
    name = forms.CharField(max_length=200)
    description = LimitedTextField(limit="description", required=False)
    included_keys = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                                    help_text="Keys always in the segment, one per line or comma-separated.")
    excluded_keys = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                                    help_text="Keys never in the segment, even when a rule matches.")
    rules = forms.CharField(widget=forms.Textarea(attrs={"rows": 10, "class": "mono", "spellcheck": "false"}),
                            required=False, label="Attribute rules (JSON)",
                            help_text='A list of {"clauses": [...]}; the segment matches when any rule does.')

    # Edits only. Not required here: whether an edit needs a reason (it does when it waits for
    # approval) is the change-control service's decision, which names this field when it refuses.
    reason = LimitedTextField(limit="reason", required=False)
    version = forms.IntegerField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args: Any, editing: bool = False, segment_keys: list[str] | None = None,
                 stored_rules: list | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if editing:
            del self.fields["key"]
            self.fields["version"].required = True
        else:
            del self.fields["version"]
            del self.fields["reason"]
        self.setup_rule_editor(stored_rules=stored_rules or [], variation_keys=[], segment_keys=segment_keys or [])

    def service_field_for(self, field: str, message: str) -> str | tuple[str, str]:
        return self.rules_field_for(message) if field == "rules" else field

    def clean_included_keys(self) -> list[str]:
        return split_list(self.cleaned_data["included_keys"])

    def clean_excluded_keys(self) -> list[str]:
        return split_list(self.cleaned_data["excluded_keys"])

    def clean_rules(self) -> list:
        return parse_rules_text(self.cleaned_data["rules"]) if self.mode() == JSON_VIEW else []

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        self.clean_builder(data)
        return data

    def changes(self) -> dict[str, Any]:
        """What the segment services take (the editor's own fields left out)."""
        return {name: value for name, value in self.cleaned_data.items()
                if name in ("key", "name", "description", "included_keys", "excluded_keys", "rules", "reason",
                            "version")}
