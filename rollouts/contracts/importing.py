"""Importing contracts: the diff against the catalog, then one transaction that applies each
part through the console's services (or, in a dry run, tries and rolls back)."""

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
from audit.diff import diff as json_diff
from audit.services import record
from audit.validators import text_limit_message
from flags import services as flag_services
from flags.models import Flag, Project, Targeting
from flags.permissions import can_edit_catalog, has_project_permission
from rollouts.change_control import submitting as services
from rollouts.contracts.document import (
    CONTRACT_FIELDS,
    CONTRACT_KEY,
    YAML_NAMES,
    ContractProblem,
    contract_document,
    join_path,
    json_problem,
    parse_contracts,
)
from rollouts.contracts.validation import Catalog, Checker, load_catalog
from rollouts.diff import DiffLine
from rollouts.models import ChangeRequest

APPLIED, REQUESTED, WAITING = "applied", "requested", "waiting"


# --- the plan: what the file changes -------------------------------------------------------


@dataclass(frozen=True)
class FieldChange:
    path: str
    before: str
    after: str
    kind: str  # "changed", "added" or "removed"


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
class FlagPlan:
    flag_key: str
    flag: Flag | None  # None: a new flag
    data: dict[str, Any]
    variations: list[dict[str, Any]] | None
    targeting: dict[str, dict[str, Any]]
    problems: list[ContractProblem] = field(default_factory=list)
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


def _plan(label: str, body: dict[str, Any], catalog: Catalog) -> FlagPlan:
    checker = Checker(label, body, catalog)
    data, variations, targeting = checker.run()
    plan = FlagPlan(flag_key=label, flag=checker.flag, data=data, variations=variations, targeting=targeting,
                    problems=checker.problems)
    new = plan.flag is None
    current = {} if new else contract_document(plan.flag, list(catalog.environments.values()))[CONTRACT_KEY]
    if not new:
        environment_keys = {env.pk: key for key, env in catalog.environments.items()}
        plan.targeting_versions = {environment_keys[t.environment_id]: t.version for t in plan.flag.targetings.all()}
    for name, value in data.items():
        if name in ("flag_key", "value_type") and not new:
            continue
        if new or _canon(value) != _canon(current.get(name)):
            plan.contract_changes[name] = value
            plan.changes += _field_changes(name, current.get(name), value, new)
    current_variations = {v["key"]: v for v in current.get("variations", [])}
    for variation in variations or []:
        key = variation["key"]
        if key not in current_variations:
            plan.new_variations.append(variation)
            plan.changes += _field_changes(f"variations.{key}", None, variation, new=True)
            continue
        changed = {name: value for name, value in variation.items()
                   if name != "key" and _canon(value) != _canon(current_variations[key].get(name))}
        if changed:
            plan.variation_changes[key] = changed
            for name, value in changed.items():
                plan.changes += _field_changes(f"variations.{key}.{name}", current_variations[key][name], value)
    for env_key, state in targeting.items():
        before = current.get("targeting", {}).get(env_key, {})
        changed = {name: value for name, value in state.items() if new or _canon(value) != _canon(before.get(name))}
        if changed:
            plan.targeting_changes[env_key] = changed
            for name, value in changed.items():
                plan.changes += _field_changes(f"targeting.{env_key}.{name}", before.get(name), value, new)
    return plan


# --- applying through the services ---------------------------------------------------------


class _Refused(Exception):
    def __init__(self, problems: list[ContractProblem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


@contextmanager
def _step(plan: FlagPlan, path: str) -> Iterator[None]:
    """A service's refusal, named by flag and path, aborts the whole import."""
    try:
        yield
    except ValidationError as exc:
        problems = []
        for name, messages in (exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.messages}).items():
            where = path if name == NON_FIELD_ERRORS else join_path(path, YAML_NAMES.get(name, name))
            problems += [ContractProblem(plan.flag_key, where, message) for message in messages]
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


def _create_flag(plan: FlagPlan, project: Project, actor: AbstractBaseUser) -> Flag:
    data = plan.data
    owners = _users_by_name({data["owner_user"]} if data.get("owner_user") else set())
    variations = [{"key": v["key"], "value": v["value"], "name": v.get("name") or "",
                   "description": v.get("description") or "", "risk_rank": v.get("risk_rank", 0)}
                  for v in plan.variations or []]
    fields = {CONTRACT_FIELDS[name]: value for name, value in data.items()
              if name not in ("flag_key", "fallback", "owner_user")}
    with _step(plan, ""):
        flag = flag_services.flag_create(project=project, key=plan.flag_key, variations=variations,
                                         fallback_variation_key=data["fallback"],
                                         owner_user=owners.get(data.get("owner_user") or ""), actor=actor, **fields)
    plan.outcomes.append(Outcome(APPLIED, f"new flag with {len(variations)} variation(s)"))
    return flag


def _apply_contract(plan: FlagPlan, flag: Flag, actor: AbstractBaseUser, reason: str,
                    requests: list[ChangeRequest]) -> None:
    changes = dict(plan.contract_changes)
    for part, name in (("fallback_variation", "fallback"), ("json_schema", "json_schema")):
        if name in changes and (waiting := _waiting_flag_part(requests, part, changes[name])):
            plan.outcomes.append(Outcome(WAITING, f"contract: {name}", waiting.pk))
            del changes[name]
    if not changes:
        return
    submitted = list(changes)
    fallback, tags = changes.pop("fallback", None), changes.pop("tags", None)
    fields = {CONTRACT_FIELDS[name]: value for name, value in changes.items()}
    if "owner_user" in fields:
        fields["owner_user"] = _users_by_name({fields["owner_user"]} if fields["owner_user"] else set()).get(
            fields["owner_user"] or "")
    with _step(plan, ""):
        _, change_request = services.contract_change_submit(
            flag=flag, actor=actor, reason=reason, expected_version=flag.version, fallback_variation_key=fallback,
            tags=tags, **fields)
    held = set()
    if change_request is not None:
        held = {YAML_NAMES[part] for part in change_request.proposed}
        plan.outcomes.append(_request_outcome(change_request, f"contract: {', '.join(sorted(held))}"))
    applied = [name for name in submitted if name not in held]
    if applied:
        plan.outcomes.append(Outcome(APPLIED, f"contract: {', '.join(applied)}"))


def _apply_variations(plan: FlagPlan, flag: Flag, actor: AbstractBaseUser, reason: str,
                      requests: list[ChangeRequest]) -> None:
    variations = {v.key: v for v in flag.variations.select_related("flag")}
    for key, changes in plan.variation_changes.items():
        changes = dict(changes)
        # A served variation's value and risk rank wait in a flag-wide request (`variations`,
        # `risk_ranks`); one already open for the same change is not submitted again.
        for name, part in (("value", "variations"), ("risk_rank", "risk_ranks")):
            if name in changes and (waiting := _waiting_flag_part(requests, part, changes[name], key)):
                plan.outcomes.append(Outcome(WAITING, f"variation {key}: {name}", waiting.pk))
                del changes[name]
        if not changes:
            continue
        with _step(plan, f"variations.{key}"):
            _, change_request = services.variation_change_submit(variation=variations[key], actor=actor,
                                                                 reason=reason, **changes)
        if change_request is not None:
            held = [name for name, part in (("value", "variations"), ("risk_rank", "risk_ranks"))
                    if name in changes and part in change_request.proposed]
            plan.outcomes.append(_request_outcome(change_request, f"variation {key}: {', '.join(held)}"))
            for name in held:
                changes.pop(name)
        if changes:
            plan.outcomes.append(Outcome(APPLIED, f"variation {key}: {', '.join(changes)}"))


def _apply_targeting(plan: FlagPlan, flag: Flag, actor: AbstractBaseUser, reason: str,
                     requests: list[ChangeRequest]) -> None:
    targetings = {t.environment.key: t for t in Targeting.objects.filter(flag=flag).select_related("environment")}
    for env_key, changes in plan.targeting_changes.items():
        targeting = targetings[env_key]
        # The version the diff was made from: a change committed since is a conflict, not overwritten.
        version = plan.targeting_versions.get(env_key, targeting.version)
        where = f"targeting in {targeting.environment.name}"
        with _step(plan, f"targeting.{env_key}"):
            preview = services.preview_targeting_change(targeting=targeting, changes=changes)
            proposed = flag_services.targeting_proposal(targeting=targeting, changes=changes)
        plan.notes += [DiffLine(f"{targeting.environment.name}: {line.text}", line.escalates) for line in preview.lines]
        waiting = next((cr for cr in requests if cr.kind == ChangeRequest.Kind.TARGETING
                        and cr.environment_id == targeting.environment_id and _canon(cr.proposed) == _canon(proposed)),
                       None)
        if waiting is not None:
            plan.outcomes.append(Outcome(WAITING, where, waiting.pk))
            continue
        with _step(plan, f"targeting.{env_key}"):
            result = services.targeting_change_submit(targeting=targeting, changes=changes, reason=reason, actor=actor,
                                                      expected_version=version)
        if isinstance(result, ChangeRequest):
            plan.outcomes.append(_request_outcome(result, where))
        else:
            plan.outcomes.append(Outcome(APPLIED, where))


def _apply(plan: FlagPlan, project: Project, actor: AbstractBaseUser, reason: str) -> None:
    if plan.flag is None:
        flag = _create_flag(plan, project, actor)
        requests: list[ChangeRequest] = []
    else:
        flag, requests = plan.flag, _open_requests(plan.flag)
        for variation in plan.new_variations:
            with _step(plan, f"variations.{variation['key']}"):
                flag_services.variation_create(flag=flag, actor=actor, **variation)
            plan.outcomes.append(Outcome(APPLIED, f"new variation {variation['key']}"))
        _apply_contract(plan, flag, actor, reason, requests)
        _apply_variations(plan, flag, actor, reason, requests)
    _apply_targeting(plan, flag, actor, reason, requests)


def _permission_problem(plan: FlagPlan, project: Project, actor: AbstractBaseUser) -> ContractProblem | None:
    if plan.flag is None and not has_project_permission(actor, project, "edit_catalog"):
        return ContractProblem(plan.flag_key, "", f"{actor.get_username()} may not create flags in {project.key} "
                                                  "(it needs the flag owner / editor role)")
    if plan.flag is not None and not can_edit_catalog(actor, project, plan.flag):
        return ContractProblem(plan.flag_key, "", f"{actor.get_username()} may not change this flag "
                                                  "(it needs the editor role, or being the flag's owner)")
    return None


# --- the import ----------------------------------------------------------------------------


@dataclass
class ImportResult:
    project: Project
    dry_run: bool
    plans: list[FlagPlan] = field(default_factory=list)
    file_problems: list[ContractProblem] = field(default_factory=list)
    applied: bool = False  # committed
    stale: bool = False  # the catalog moved since the diff the caller approved

    @property
    def problems(self) -> list[ContractProblem]:
        return [*self.file_problems, *(p for plan in self.plans for p in plan.problems)]

    @property
    def changed_plans(self) -> list[FlagPlan]:
        return [plan for plan in self.plans if plan.changes]

    @property
    def written(self) -> bool:
        """Whether anything was (or, in a dry run, would be) written: not when every change
        already waits in an open change request."""
        return any(o.status != WAITING for plan in self.plans for o in plan.outcomes)

    @property
    def change_requests(self) -> list[Outcome]:
        return [o for plan in self.plans for o in plan.outcomes if o.status == REQUESTED]

    @property
    def fingerprint(self) -> str:
        """Names the diff: an apply carrying it refuses to run if the catalog moved meanwhile."""
        shape = [[plan.flag_key, plan.is_new, [[c.path, c.before, c.after] for c in plan.changes]]
                 for plan in self.plans]
        return hashlib.sha256(_canon(shape).encode()).hexdigest()


def import_contracts(*, project: Project, text: str, actor: AbstractBaseUser, reason: str, dry_run: bool = False,
                     expected_fingerprint: str | None = None) -> ImportResult:
    """Validate, diff and apply (or, with `dry_run`, try and roll back) a contracts file.
    Nothing is written unless every contract is valid and every service accepts its part."""
    result = ImportResult(project=project, dry_run=dry_run)
    reason = (reason or "").strip()
    if not reason:
        result.file_problems.append(ContractProblem("", "reason", "Say why: the reason stays with every change "
                                                                  "in the audit trail."))
    elif len(reason) > TEXT_LIMITS["reason"]:
        result.file_problems.append(ContractProblem("", "reason", text_limit_message("reason", len(reason))))
    if not actor.is_active:
        result.file_problems.append(ContractProblem("", "actor", f"{actor.get_username()} is not an active user."))
    contracts, problems = parse_contracts(text)
    result.file_problems += problems
    with transaction.atomic():
        catalog = load_catalog(project, [label for label, _ in contracts])
        result.plans = [_plan(label, body, catalog) for label, body in contracts]
        for plan in result.plans:
            if plan.changes and (problem := _permission_problem(plan, project, actor)):
                plan.problems.insert(0, problem)
        if expected_fingerprint is not None and expected_fingerprint != result.fingerprint:
            result.stale = True
            return result
        if result.problems or not result.changed_plans:
            return result
        try:
            with transaction.atomic():
                for plan in result.changed_plans:
                    _apply(plan, project, actor, reason)
                if result.written:
                    _record_import(result, actor, reason)
                if dry_run:
                    raise _Refused([])  # roll the trial back
        except _Refused as refused:
            for plan in result.plans:
                plan.problems += [p for p in refused.problems if p.flag == plan.flag_key]
                if refused.problems:
                    plan.outcomes.clear()
            return result
        result.applied = True
    return result


def _record_import(result: ImportResult, actor: AbstractBaseUser, reason: str) -> None:
    plans = result.changed_plans
    created = sum(plan.is_new for plan in plans)
    summary = (f"Imported contracts: {created} new flag(s), {len(plans) - created} changed; "
               f"{len(result.change_requests)} change request(s) opened")
    record(actor=actor, action=AuditAction.CONTRACTS_IMPORTED, target=result.project, project=result.project,
           after={plan.flag_key: {"new": plan.is_new, "outcomes": [o.text(False) for o in plan.outcomes]}
                  for plan in plans},
           summary=summary, reason=reason)


def render_report(result: ImportResult) -> str:
    """The diff and the outcome as plain text, for the command line."""
    lines = []
    for plan in result.plans:
        state = "new flag" if plan.is_new else ("changed" if plan.changes else "unchanged")
        lines.append(f"{plan.flag_key} ({state})")
        for change in plan.changes:
            after = change.after if change.kind != "removed" else "(removed)"
            lines.append(f"  {change.path}: {after}" if change.kind == "added" else
                         f"  {change.path}: {change.before} → {after}")
        lines += [f"  ~ {note.text}" for note in plan.notes]
        lines += [f"  => {outcome.text(result.dry_run)}" for outcome in plan.outcomes]
    if result.problems:
        lines.append(f"{len(result.problems)} problem(s); nothing was written.")
    elif not result.changed_plans:
        lines.append("No changes: the catalog already matches the file.")
    elif not result.written:
        lines.append("Nothing to write: every change already waits for approval.")
    elif result.dry_run:
        lines.append("Dry run: nothing was written.")
    else:
        lines.append(f"Imported {len(result.changed_plans)} flag(s); "
                     f"{len(result.change_requests)} change request(s) opened.")
    return "\n".join(lines)
