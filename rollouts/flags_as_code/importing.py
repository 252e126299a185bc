"""Importing a document: what it changes in each flag (`FlagChanges`: the diff against the
catalog, grouped the way the services take it), then one transaction that applies each part
through the console's services (or, in a dry run, tries and rolls back), and the report.
Vocabulary: *the contract* is a flag's metadata (the Flag model's contract fields); *the
document* (or *the file*) is the YAML that carries contracts, variations and targeting, one
*entry* (`ai_featureops_contract:`) per flag; a rollout plan (`rollouts.plans`) is another thing.
User-visible text still says "contracts" for the file's entries, as the seed article does."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import transaction

from audit.constants import TEXT_LIMITS, AuditAction
from audit.diff import Change as FieldChange  # path, before, after, kind (changed, added, removed)
from audit.diff import diff as json_diff
from audit.services import record
from audit.validators import text_limit_message
from flags import services as flag_services
from flags.models import Flag, Project, Targeting
from flags.permissions import CREATE_FLAGS, can_edit_catalog
from rollouts.change_control import submitting as services
from rollouts.diff import DiffLine
from rollouts.flags_as_code.document import (
    CONTRACT_FIELDS,
    CONTRACT_KEY,
    YAML_NAMES,
    DocumentProblem,
    flag_entry,
    join_path,
    json_problem,
    parse_document,
)
from rollouts.flags_as_code.validation import Catalog, Checker, load_catalog
from rollouts.models import ChangeRequest

APPLIED, REQUESTED, WAITING = "applied", "requested", "waiting"


# --- what the file changes, flag by flag ----------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What happened (or, in a dry run, would happen) to one part of a flag's changes."""

    status: str  # APPLIED, REQUESTED (a change request opened) or WAITING (one was open already)
    what: str
    change_request_id: int | None = None
    detail: str = ""

    def text(self, dry_run: bool) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        if self.status == APPLIED:
            return f"{'would apply' if dry_run else 'applied'}: {self.what}"
        if self.status == WAITING:
            return f"already waiting for approval in CR-{self.change_request_id}: {self.what} (not submitted again)"
        where = "would wait for approval" if dry_run else f"waits for approval in CR-{self.change_request_id}"
        return f"{where}: {self.what}{detail}"


@dataclass
class FlagChanges:
    """What one entry of the file asks of its flag: the checked values, the diff rows
    (`changes`), the same grouped per service, and, once tried, the outcomes."""

    flag_key: str
    flag: Flag | None  # None: a new flag
    data: dict[str, Any]
    variations: list[dict[str, Any]] | None
    targeting: dict[str, dict[str, Any]]
    problems: list[DocumentProblem] = field(default_factory=list)
    changes: list[FieldChange] = field(default_factory=list)
    contract_changes: dict[str, Any] = field(default_factory=dict)
    new_variations: list[dict[str, Any]] = field(default_factory=list)
    variation_changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    targeting_changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    targeting_versions: dict[str, int] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    notes: list[DiffLine] = field(default_factory=list)

    @property
    def is_new(self) -> bool:
        return self.flag is None


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _field_changes(path: str, before: Any, after: Any, new: bool = False) -> list[FieldChange]:
    """JSON objects (schemas, profiles, serves) key by key, as the audit trail shows them."""
    if new:
        return [FieldChange(path, "", _show(after), "added")]
    if json_problem(after):
        return [FieldChange(path, _show(before), _show(after), "changed")]
    if isinstance(before, dict) and isinstance(after, dict):
        changes = [FieldChange(f"{path}.{c.path}", c.before, c.after, c.kind) for c in json_diff(before, after)]
        if changes:  # (audit.diff compares with ==, so true and 1 would look equal)
            return changes
    if isinstance(before, list) and isinstance(after, list) and before and after:
        # Rules and targets element by element: an appended rule reads as one added line.
        changes = []
        for index in range(max(len(before), len(after))):
            if index >= len(before):
                changes.append(FieldChange(f"{path}[{index}]", "", _show(after[index]), "added"))
            elif index >= len(after):
                changes.append(FieldChange(f"{path}[{index}]", _show(before[index]), "", "removed"))
            elif _canon(before[index]) != _canon(after[index]):
                changes += _field_changes(f"{path}[{index}]", before[index], after[index])
        return changes
    return [FieldChange(path, _show(before), _show(after), "changed")]


def _changes_for(label: str, body: dict[str, Any], catalog: Catalog) -> FlagChanges:
    checker = Checker(label, body, catalog)
    data, variations, targeting = checker.run()
    flag_changes = FlagChanges(flag_key=label, flag=checker.flag, data=data, variations=variations,
                               targeting=targeting, problems=checker.problems)
    new = flag_changes.flag is None
    current = {} if new else flag_entry(flag_changes.flag, list(catalog.environments.values()))[CONTRACT_KEY]
    if not new:
        environment_keys = {env.pk: key for key, env in catalog.environments.items()}
        flag_changes.targeting_versions = {environment_keys[t.environment_id]: t.version
                                           for t in flag_changes.flag.targetings.all()}
    for name, value in data.items():
        if name in ("flag_key", "value_type") and not new:
            continue
        if new or _canon(value) != _canon(current.get(name)):
            flag_changes.contract_changes[name] = value
            flag_changes.changes += _field_changes(name, current.get(name), value, new)
    current_variations = {v["key"]: v for v in current.get("variations", [])}
    for variation in variations or []:
        key = variation["key"]
        if key not in current_variations:
            flag_changes.new_variations.append(variation)
            flag_changes.changes += _field_changes(f"variations.{key}", None, variation, new=True)
            continue
        changed = {name: value for name, value in variation.items()
                   if name != "key" and _canon(value) != _canon(current_variations[key].get(name))}
        if changed:
            flag_changes.variation_changes[key] = changed
            for name, value in changed.items():
                flag_changes.changes += _field_changes(f"variations.{key}.{name}", current_variations[key][name],
                                                       value)
    for env_key, state in targeting.items():
        before = current.get("targeting", {}).get(env_key, {})
        changed = {name: value for name, value in state.items() if new or _canon(value) != _canon(before.get(name))}
        if changed:
            flag_changes.targeting_changes[env_key] = changed
            for name, value in changed.items():
                flag_changes.changes += _field_changes(f"targeting.{env_key}.{name}", before.get(name), value, new)
    return flag_changes


# --- applying through the services ---------------------------------------------------------


class _Refused(Exception):
    def __init__(self, problems: list[DocumentProblem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


@contextmanager
def _step(flag_changes: FlagChanges, path: str) -> Iterator[None]:
    """A service's refusal, named by flag and path, aborts the whole import."""
    try:
        yield
    except ValidationError as exc:
        problems = []
        for name, messages in (exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.messages}).items():
            where = path if name == NON_FIELD_ERRORS else join_path(path, YAML_NAMES.get(name, name))
            problems += [DocumentProblem(flag_changes.flag_key, where, message) for message in messages]
        raise _Refused(problems) from exc


def _request_outcome(change_request: ChangeRequest, what: str) -> Outcome:
    reasons = "; ".join(reason["text"] for reason in change_request.reasons)
    count = change_request.required_approvals
    return Outcome(REQUESTED, what, change_request.pk, f"{count} approval{'s' if count > 1 else ''}: {reasons}")


def _open_requests(flag: Flag) -> list[ChangeRequest]:
    return list(ChangeRequest.objects.filter(flag=flag, status__in=ChangeRequest.OPEN).order_by("id"))


def _waiting_flag_part(requests: list[ChangeRequest], part: str, value: Any, key: str = "") -> ChangeRequest | None:
    """An open flag-wide request that already proposes this fallback, schema or (with `key`)
    this variation's value."""
    for change_request in requests:
        if change_request.kind != ChangeRequest.Kind.FLAG or part not in change_request.proposed:
            continue
        proposed = change_request.proposed[part]
        if key:
            if key not in proposed:
                continue
            proposed = proposed[key]
        if _canon(proposed) == _canon(value):
            return change_request
    return None


def _users_by_name(names: set[str]) -> dict[str, AbstractBaseUser]:
    return {user.get_username(): user for user in get_user_model().objects.filter(username__in=names)}


def _create_flag(flag_changes: FlagChanges, project: Project, actor: AbstractBaseUser) -> Flag:
    data = flag_changes.data
    owners = _users_by_name({data["owner_user"]} if data.get("owner_user") else set())
    variations = [{"key": v["key"], "value": v["value"], "name": v.get("name") or "",
                   "description": v.get("description") or "", "risk_rank": v.get("risk_rank", 0)}
                  for v in flag_changes.variations or []]
    fields = {CONTRACT_FIELDS[name]: value for name, value in data.items()
              if name not in ("flag_key", "fallback", "owner_user")}
    with _step(flag_changes, ""):
        flag = flag_services.flag_create(project=project, key=flag_changes.flag_key, variations=variations,
                                         fallback_variation_key=data["fallback"],
                                         owner_user=owners.get(data.get("owner_user") or ""), actor=actor, **fields)
    flag_changes.outcomes.append(Outcome(APPLIED, f"new flag with {len(variations)} variation(s)"))
    return flag


def _apply_contract(flag_changes: FlagChanges, flag: Flag, actor: AbstractBaseUser, reason: str,
                    requests: list[ChangeRequest]) -> None:
    changes = dict(flag_changes.contract_changes)
    for part, name in (("fallback_variation", "fallback"), ("json_schema", "json_schema")):
        if name in changes and (waiting := _waiting_flag_part(requests, part, changes[name])):
            flag_changes.outcomes.append(Outcome(WAITING, f"contract: {name}", waiting.pk))
            del changes[name]
    if not changes:
        return
    submitted = list(changes)
    fallback, tags = changes.pop("fallback", None), changes.pop("tags", None)
    fields = {CONTRACT_FIELDS[name]: value for name, value in changes.items()}
    if "owner_user" in fields:
        fields["owner_user"] = _users_by_name({fields["owner_user"]} if fields["owner_user"] else set()).get(
            fields["owner_user"] or "")
    with _step(flag_changes, ""):
        _, change_request = services.contract_change_submit(
            flag=flag, actor=actor, reason=reason, expected_version=flag.version, fallback_variation_key=fallback,
            tags=tags, **fields)
    held = set()
    if change_request is not None:
        held = {YAML_NAMES[part] for part in change_request.proposed}
        flag_changes.outcomes.append(_request_outcome(change_request, f"contract: {', '.join(sorted(held))}"))
    applied = [name for name in submitted if name not in held]
    if applied:
        flag_changes.outcomes.append(Outcome(APPLIED, f"contract: {', '.join(applied)}"))


def _apply_variations(flag_changes: FlagChanges, flag: Flag, actor: AbstractBaseUser, reason: str,
                      requests: list[ChangeRequest]) -> None:
    variations = {v.key: v for v in flag.variations.select_related("flag")}
    for key, changes in flag_changes.variation_changes.items():
        changes = dict(changes)
        # A served variation's value and risk rank wait in a flag-wide request (`variations`,
        # `risk_ranks`); one already open for the same change is not submitted again.
        for name, part in (("value", "variations"), ("risk_rank", "risk_ranks")):
            if name in changes and (waiting := _waiting_flag_part(requests, part, changes[name], key)):
                flag_changes.outcomes.append(Outcome(WAITING, f"variation {key}: {name}", waiting.pk))
                del changes[name]
        if not changes:
            continue
        with _step(flag_changes, f"variations.{key}"):
            _, change_request = services.variation_change_submit(variation=variations[key], actor=actor,
                                                                 reason=reason, **changes)
        if change_request is not None:
            held = [name for name, part in (("value", "variations"), ("risk_rank", "risk_ranks"))
                    if name in changes and part in change_request.proposed]
            flag_changes.outcomes.append(_request_outcome(change_request, f"variation {key}: {', '.join(held)}"))
            for name in held:
                changes.pop(name)
        if changes:
            flag_changes.outcomes.append(Outcome(APPLIED, f"variation {key}: {', '.join(changes)}"))


def _apply_targeting(flag_changes: FlagChanges, flag: Flag, actor: AbstractBaseUser, reason: str,
                     requests: list[ChangeRequest]) -> None:
    targetings = {t.environment.key: t for t in Targeting.objects.filter(flag=flag).select_related("environment")}
    for env_key, changes in flag_changes.targeting_changes.items():
        targeting = targetings[env_key]
        # The version the diff was made from: a change committed since is a conflict, not overwritten.
        version = flag_changes.targeting_versions.get(env_key, targeting.version)
        where = f"targeting in {targeting.environment.name}"
        with _step(flag_changes, f"targeting.{env_key}"):
            preview = services.preview_targeting_change(targeting=targeting, changes=changes)
            proposed = flag_services.targeting_proposal(targeting=targeting, changes=changes)
        flag_changes.notes += [DiffLine(f"{targeting.environment.name}: {line.text}", line.escalates)
                               for line in preview.lines]
        waiting = next((cr for cr in requests if cr.kind == ChangeRequest.Kind.TARGETING
                        and cr.environment_id == targeting.environment_id and _canon(cr.proposed) == _canon(proposed)),
                       None)
        if waiting is not None:
            flag_changes.outcomes.append(Outcome(WAITING, where, waiting.pk))
            continue
        with _step(flag_changes, f"targeting.{env_key}"):
            result = services.targeting_change_submit(targeting=targeting, changes=changes, reason=reason, actor=actor,
                                                      expected_version=version)
        if isinstance(result, ChangeRequest):
            flag_changes.outcomes.append(_request_outcome(result, where))
        else:
            flag_changes.outcomes.append(Outcome(APPLIED, where))


def _apply(flag_changes: FlagChanges, project: Project, actor: AbstractBaseUser, reason: str) -> None:
    if flag_changes.flag is None:
        flag = _create_flag(flag_changes, project, actor)
        requests: list[ChangeRequest] = []
    else:
        flag, requests = flag_changes.flag, _open_requests(flag_changes.flag)
        for variation in flag_changes.new_variations:
            with _step(flag_changes, f"variations.{variation['key']}"):
                flag_services.variation_create(flag=flag, actor=actor, **variation)
            flag_changes.outcomes.append(Outcome(APPLIED, f"new variation {variation['key']}"))
        _apply_contract(flag_changes, flag, actor, reason, requests)
        _apply_variations(flag_changes, flag, actor, reason, requests)
    _apply_targeting(flag_changes, flag, actor, reason, requests)


def _permission_problem(flag_changes: FlagChanges, project: Project, actor: AbstractBaseUser) -> DocumentProblem | None:
    """The permission rules of the console pages, said per flag of the document."""
    flag = flag_changes.flag
    if flag is None and not CREATE_FLAGS.allows(actor, project):
        return DocumentProblem(flag_changes.flag_key, "", f"{actor.get_username()} may not create flags in "
                                                          f"{project.key} (it needs the flag owner / editor role)")
    if flag is not None and not can_edit_catalog(actor, project, flag):  # EDIT_CONTRACT's test, flag by flag
        return DocumentProblem(flag_changes.flag_key, "", f"{actor.get_username()} may not change this flag "
                                                          "(it needs the editor role, or being the flag's owner)")
    return None


# --- the import ----------------------------------------------------------------------------


@dataclass
class ImportResult:
    project: Project
    dry_run: bool
    by_flag: list[FlagChanges] = field(default_factory=list)  # one per entry of the file, in its order
    file_problems: list[DocumentProblem] = field(default_factory=list)
    applied: bool = False  # committed
    stale: bool = False  # the catalog moved since the diff the caller approved

    @property
    def problems(self) -> list[DocumentProblem]:
        return [*self.file_problems, *(p for flag_changes in self.by_flag for p in flag_changes.problems)]

    @property
    def changed_flags(self) -> list[FlagChanges]:
        return [flag_changes for flag_changes in self.by_flag if flag_changes.changes]

    @property
    def written(self) -> bool:
        """Whether anything was (or, in a dry run, would be) written: not when every change
        already waits in an open change request."""
        return any(o.status != WAITING for flag_changes in self.by_flag for o in flag_changes.outcomes)

    @property
    def change_requests(self) -> list[Outcome]:
        return [o for flag_changes in self.by_flag for o in flag_changes.outcomes if o.status == REQUESTED]

    @property
    def fingerprint(self) -> str:
        """Names the diff: an apply carrying it refuses to run if the catalog moved meanwhile."""
        shape = [[flag_changes.flag_key, flag_changes.is_new,
                  [[c.path, c.before, c.after] for c in flag_changes.changes]] for flag_changes in self.by_flag]
        return hashlib.sha256(_canon(shape).encode()).hexdigest()


def import_contracts(*, project: Project, text: str, actor: AbstractBaseUser, reason: str, dry_run: bool = False,
                     expected_fingerprint: str | None = None) -> ImportResult:
    """Validate, diff and apply (or, with `dry_run`, try and roll back) a document.
    Nothing is written unless every entry is valid and every service accepts its part."""
    result = ImportResult(project=project, dry_run=dry_run)
    reason = (reason or "").strip()
    if not reason:
        result.file_problems.append(DocumentProblem("", "reason", "Say why: the reason stays with every change "
                                                                  "in the audit trail."))
    elif len(reason) > TEXT_LIMITS["reason"]:
        result.file_problems.append(DocumentProblem("", "reason", text_limit_message("reason", len(reason))))
    if not actor.is_active:
        result.file_problems.append(DocumentProblem("", "actor", f"{actor.get_username()} is not an active user."))
    entries, problems = parse_document(text)
    result.file_problems += problems
    with transaction.atomic():
        catalog = load_catalog(project, [label for label, _ in entries])
        result.by_flag = [_changes_for(label, body, catalog) for label, body in entries]
        for flag_changes in result.by_flag:
            if flag_changes.changes and (problem := _permission_problem(flag_changes, project, actor)):
                flag_changes.problems.insert(0, problem)
        if expected_fingerprint is not None and expected_fingerprint != result.fingerprint:
            result.stale = True
            return result
        if result.problems or not result.changed_flags:
            return result
        try:
            with transaction.atomic():
                for flag_changes in result.changed_flags:
                    _apply(flag_changes, project, actor, reason)
                if result.written:
                    _record_import(result, actor, reason)
                if dry_run:
                    raise _Refused([])  # roll the trial back
        except _Refused as refused:
            for flag_changes in result.by_flag:
                flag_changes.problems += [p for p in refused.problems if p.flag == flag_changes.flag_key]
                if refused.problems:
                    flag_changes.outcomes.clear()
            return result
        result.applied = True
    return result


def _record_import(result: ImportResult, actor: AbstractBaseUser, reason: str) -> None:
    changed = result.changed_flags
    created = sum(flag_changes.is_new for flag_changes in changed)
    summary = (f"Imported contracts: {created} new flag(s), {len(changed) - created} changed; "
               f"{len(result.change_requests)} change request(s) opened")
    record(actor=actor, action=AuditAction.CONTRACTS_IMPORTED, target=result.project, project=result.project,
           after={flag_changes.flag_key: {"new": flag_changes.is_new,
                                          "outcomes": [o.text(False) for o in flag_changes.outcomes]}
                  for flag_changes in changed},
           summary=summary, reason=reason)


def render_report(result: ImportResult) -> str:
    """The diff and the outcome as plain text, for the command line."""
    lines = []
    for flag_changes in result.by_flag:
        state = "new flag" if flag_changes.is_new else ("changed" if flag_changes.changes else "unchanged")
        lines.append(f"{flag_changes.flag_key} ({state})")
        for change in flag_changes.changes:
            after = change.after if change.kind != "removed" else "(removed)"
            lines.append(f"  {change.path}: {after}" if change.kind == "added" else
                         f"  {change.path}: {change.before} → {after}")
        lines += [f"  ~ {note.text}" for note in flag_changes.notes]
        lines += [f"  => {outcome.text(result.dry_run)}" for outcome in flag_changes.outcomes]
    if result.problems:
        lines.append(f"{len(result.problems)} problem(s); nothing was written.")
    elif not result.changed_flags:
        lines.append("No changes: the catalog already matches the file.")
    elif not result.written:
        lines.append("Nothing to write: every change already waits for approval.")
    elif result.dry_run:
        lines.append("Dry run: nothing was written.")
    else:
        lines.append(f"Imported {len(result.changed_flags)} flag(s); "
                     f"{len(result.change_requests)} change request(s) opened.")
    return "\n".join(lines)
