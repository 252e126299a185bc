"""Flags as code from CI: plan (a dry run) and apply a document of flag contracts.

The body is the YAML document the console's import page takes (`application/yaml` or `text/yaml`),
or JSON `{"document": "<yaml>", "reason": …}`. Both endpoints run the console's own import
(`rollouts.flags_as_code.import_contracts`): the whole document is validated before anything is
written, each part goes through the catalog and change-control services, and a risky change to a
governed environment opens a change request instead of applying. A plan is that import tried and
rolled back; an apply commits it, answering 200 when everything applied and 202 when part of it
waits for approval, with the change requests. Problems answer 422 with one error per problem,
its path in the file: `flags[i]` is the i-th contract of the document (0-based; a file holding
one contract is `flags[0]`), then the place inside it, e.g. `flags[2].variations[0].value`.
Who may import is the console's rule (IMPORT_CONTRACTS, then per flag what its editors need)."""

from __future__ import annotations

import json
import re
from typing import Any, Literal, TypeVar

import pydantic
import yaml
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status

from api.answers import change_request_brief
from api.auth import needs
from api.problems import ApiError
from api.schemas import ChangeRequestBrief, FieldProblem, Problem, answers
from flags import permissions
from flags.models import Project
from flags.shortcuts import project_for
from rollouts.flags_as_code import APPLIED, CONTRACT_KEY, REQUESTED, WAITING, FlagChanges, ImportResult, Outcome
from rollouts.flags_as_code import import_contracts as import_document
from rollouts.flags_as_code.document import DocumentProblem, flag_entry, flags_for_entries
from rollouts.models import ChangeRequest

try:  # libyaml, when installed, reads the file's outline about ten times faster
    from yaml import CSafeLoader as OutlineLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as OutlineLoader  # type: ignore[assignment]

router = Router(tags=["flags-as-code"])

MAX_DOCUMENT_BYTES = 1024 * 1024
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
# A plan writes nothing, so it needs no reason of the caller; the import still asks for one.
PLAN_REASON = "Plan (dry run) through the API"
_APPROVALS = re.compile(r"^(\d+) approvals?: (.*)$", re.DOTALL)


# --- shapes ----------------------------------------------------------------------------------

class PlanIn(Schema):
    document: str = Field(description="The YAML document: one `ai_featureops_contract:` entry or a list of them, "
                                      "as the console's export writes it.")
    reason: str = Field("", description="Why: kept with every change in the audit trail (an apply needs it).")


class ApplyIn(PlanIn):
    fingerprint: str = Field("", max_length=64, description="The `fingerprint` of the plan you reviewed: the "
                                                           "apply is refused (409) if the diff is no longer that one.")


class PlanQuery(Schema):
    reason: str = Field("", description="With a YAML body: why (a JSON body carries it as `reason`).")


class ApplyQuery(PlanQuery):
    fingerprint: str = Field("", max_length=64, description="With a YAML body: the plan's fingerprint.")


class FieldDiff(Schema):
    path: str = Field(description="The field in the flag's entry, e.g. `targeting.production.rules` or "
                                  "`variations.write.value`.")
    kind: Literal["added", "changed"]
    before: Any = Field(description="The catalog's value (null for what is added).")
    after: Any = Field(description="The document's value, normalised as it will be stored.")
    lines: list[str] = Field(description="The change in words, element by element.")


class Note(Schema):
    text: str = Field(description="What a targeting change means for who gets what.")
    escalates: bool = Field(description="Some audience now reaches a riskier variation.")


class Waiting(Schema):
    what: str
    why: str = Field(description="The change-control policy's reasons.")
    required_approvals: int | None
    change_request: int | None = Field(description="Its change request; null in a plan for one the apply would open.")


class FlagPlan(Schema):
    flag: str
    status: Literal["new", "changed", "unchanged"]
    changes: list[FieldDiff]
    notes: list[Note]
    applies_now: list[str] = Field(description="Parts that apply at once (in an apply: that were applied).")
    waits_for_approval: list[Waiting] = Field(description="Parts held in a change request (opened by an apply).")
    already_waiting: list[Waiting] = Field(description="Parts an open change request already proposes exactly: "
                                                       "not submitted again.")


class PlanSummary(Schema):
    flags: int = Field(description="Contracts in the document.")
    changed: int = Field(description="Flags the document changes (or creates).")
    applies_now: int
    waits_for_approval: int
    already_waiting: int


class ContractsPlan(Schema):
    project: str
    dry_run: bool = Field(description="True for a plan: nothing was written.")
    applied: bool = Field(description="The import was committed.")
    nothing_to_do: bool = Field(description="Nothing would be (or was) written: the catalog matches the document, "
                                            "or every change already waits for approval.")
    fingerprint: str = Field(description="Names this diff; send it with the apply to refuse a moved catalog.")
    message: str
    summary: PlanSummary
    flags: list[FlagPlan]
    change_requests: list[ChangeRequestBrief] = Field(
        description="The change requests the document's risky parts wait in: opened by this apply, or open already.")


class DocumentError(FieldProblem):
    flag: str = Field("", description="The flag the problem belongs to, when it has a key.")


class DocumentProblems(Problem):
    errors: list[DocumentError] = Field(default_factory=list)


Body = TypeVar("Body", bound=PlanIn)


def _request_body(model: type[PlanIn]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()},
        **{media: {"schema": {"type": "string", "maxLength": MAX_DOCUMENT_BYTES},
                   "example": "ai_featureops_contract:\n  flag_key: support_agent_tool_mode\n  name: Support agent "
                              "tool mode\n"} for media in ("application/yaml", "text/yaml")},
    }}}


def _answers(ok: dict[int, Any]) -> dict[int, Any]:
    return {**answers({**ok, 413: Problem, 415: Problem}, write=True), 422: DocumentProblems}


# --- the request -----------------------------------------------------------------------------

def _document(request: HttpRequest, model: type[Body], query: PlanQuery) -> Body:
    """The document and its arguments, from a YAML body (arguments in the query) or a JSON one."""
    length = request.headers.get("Content-Length", "")
    too_large = ApiError(413, "too_large", f"The document is larger than {MAX_DOCUMENT_BYTES:,} bytes: split it "
                                           "into several files.")
    if length.isascii() and length.isdigit() and int(length) > MAX_DOCUMENT_BYTES:
        raise too_large
    try:
        raw = request.body
    except RequestDataTooBig:
        raise too_large from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise too_large
    media = (request.content_type or "").lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            data = json.loads(raw)
        except ValueError:
            raise ApiError(400, "invalid_json", "The body is not valid JSON.") from None
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            errors = [{"path": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
                      for error in exc.errors()]
            raise ApiError(422, "invalid", "The body does not match the API's schema.", errors=errors) from None
    if media in YAML_TYPES:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "not_utf8", "The document is not UTF-8 text.") from None
        return model.model_validate({"document": text, **query.dict()})
    raise ApiError(415, "unsupported_media_type", "Send the document as application/yaml (or text/yaml), or as "
                                                  'JSON {"document": "<yaml>"}.')


def _outline(text: str) -> list[dict[str, Any] | None]:
    """Each contract's body in file order (None for an item that is none), to name places in
    the file and read what the flags hold now. The import's own parse judges the shape."""
    try:
        loaded = yaml.load(text, Loader=OutlineLoader)  # noqa: S506 - a safe loader (C or Python)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        return []
    if isinstance(loaded, dict):
        loaded = [loaded]
    if not isinstance(loaded, list):
        return []
    return [item[CONTRACT_KEY] if isinstance(item, dict) and isinstance(item.get(CONTRACT_KEY), dict) else None
            for item in loaded]


def _current(project: Project, outline: list[dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """What the document's flags hold now, as their entries: the diff's "before"."""
    keys = [body["flag_key"] for body in outline if body and isinstance(body.get("flag_key"), str)]
    environments = list(project.environments.order_by("sort_order", "key"))
    return {flag.key: flag_entry(flag, environments)[CONTRACT_KEY] for flag in flags_for_entries(project, keys)}


# --- problems, by path in the file ---------------------------------------------------------------

def _nul_errors(document: PlanIn, outline: list[dict[str, Any] | None]) -> list[dict[str, str]]:
    """PostgreSQL stores no NUL character in text, and YAML can write one ("\\0"): refused here,
    by path, before the import would fail on it."""
    message = "contains a NUL character (\\0), which cannot be stored"
    errors = [{"path": "reason", "message": message, "flag": ""}] if "\x00" in document.reason else []
    seen: set[int] = set()
    for index, body in enumerate(outline):
        flag = body.get("flag_key") if body and isinstance(body.get("flag_key"), str) else ""
        stack: list[tuple[str, Any]] = [(f"flags[{index}]", body)]
        while stack:
            path, item = stack.pop()
            if isinstance(item, str):
                if "\x00" in item:
                    errors.append({"path": path, "message": message, "flag": flag})
                continue
            if not isinstance(item, dict | list) or id(item) in seen:
                continue  # (a structure seen before is an alias: the import refuses those)
            seen.add(id(item))
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                child_path = f"{path}.{key}" if isinstance(item, dict) else f"{path}[{key}]"
                if isinstance(key, str) and "\x00" in key:
                    errors.append({"path": child_path, "message": "a field name " + message, "flag": flag})
                stack.append((child_path, child))
    return sorted(errors, key=lambda error: error["path"])


def _in_entry(index: int | None, path: str, body: dict[str, Any] | None) -> str:
    """`flags[i].<path>`, a variation named by key written as its place in the file's list."""
    variations = (body or {}).get("variations")
    if isinstance(variations, list):
        named = [(position, item["key"]) for position, item in enumerate(variations)
                 if isinstance(item, dict) and isinstance(item.get("key"), str)]
        for position, key in sorted(named, key=lambda pair: -len(pair[1])):
            prefix = f"variations.{key}"
            if path == prefix or path.startswith(prefix + "."):
                path = f"variations[{position}]{path[len(prefix):]}"
                break
    if index is None:
        return path
    return f"flags[{index}]" + (f".{path}" if path else "")


def _errors(result: ImportResult, outline: list[dict[str, Any] | None]) -> list[dict[str, str]]:
    keys = [body.get("flag_key") if body else None for body in outline]
    first = {key: keys.index(key) for key in keys if isinstance(key, str)}
    repeats: dict[str, int] = {}

    def error(problem: DocumentProblem, index: int | None, path: str) -> dict[str, str]:
        flag = "" if problem.flag.startswith("#") else problem.flag
        body = outline[index] if index is not None and index < len(outline) else None
        return {"path": _in_entry(index, path, body), "message": problem.message, "flag": flag}

    errors = []
    for problem in result.file_problems:
        if not problem.flag:  # the file as a whole: the reason, or where the YAML breaks
            location = problem.path and problem.path not in ("reason", "actor")
            errors.append({"path": "" if location else problem.path,
                           "message": str(problem) if location else problem.message, "flag": ""})
        elif problem.flag.startswith("#"):  # an item with no usable key: "#3" is flags[2]
            path = "" if problem.path == CONTRACT_KEY else problem.path
            errors.append(error(problem, int(problem.flag[1:]) - 1, path))
        else:  # the file names this flag again: its next repetition
            seen = repeats[problem.flag] = repeats.get(problem.flag, 0) + 1
            places = [i for i, key in enumerate(keys) if key == problem.flag]
            errors.append(error(problem, places[seen] if seen < len(places) else None, problem.path))
    for flag_changes in result.by_flag:
        for problem in flag_changes.problems:
            errors.append(error(problem, first.get(flag_changes.flag_key), problem.path))
    return errors


# --- the plan ----------------------------------------------------------------------------------

def _under(path: str, field: str) -> bool:
    return path == field or path.startswith((field + ".", field + "["))


def _words(change: Any) -> str:
    if change.kind == "added":
        return f"{change.path}: added {change.after}"
    if change.kind == "removed":
        return f"{change.path}: removed {change.before}"
    return f"{change.path}: {change.before} → {change.after}"


def _field_diffs(flag_changes: FlagChanges, before: dict[str, Any]) -> list[dict[str, Any]]:
    """The diff per field the services take (a contract field, a variation's field or a new
    variation, an environment's targeting field), with its rows in words."""
    new = flag_changes.is_new
    fields: list[tuple[str, Any, Any, bool]] = [(name, before.get(name), value, new)
                                                for name, value in flag_changes.contract_changes.items()]
    fields += [(f"variations.{v['key']}", None, v, True) for v in flag_changes.new_variations]
    current_variations = {v["key"]: v for v in before.get("variations", [])}
    for key, changed in flag_changes.variation_changes.items():
        fields += [(f"variations.{key}.{name}", current_variations.get(key, {}).get(name), value, False)
                   for name, value in changed.items()]
    for env_key, changed in flag_changes.targeting_changes.items():
        was = before.get("targeting", {}).get(env_key, {})
        fields += [(f"targeting.{env_key}.{name}", None if new else was.get(name), value, new)
                   for name, value in changed.items()]
    rows, diffs = list(flag_changes.changes), []
    for path, was, value, added in fields:
        lines = [row for row in rows if _under(row.path, path)]
        rows = [row for row in rows if row not in lines]
        diffs.append({"path": path, "kind": "added" if added else "changed", "before": was, "after": value,
                      "lines": [_words(row) for row in lines]})
    return diffs


def _waiting(outcome: Outcome, requests: dict[int, ChangeRequest]) -> dict[str, Any]:
    change_request = requests.get(outcome.change_request_id or 0)
    if change_request is not None:
        return {"what": outcome.what, "why": "; ".join(reason["text"] for reason in change_request.reasons),
                "required_approvals": change_request.required_approvals, "change_request": change_request.pk}
    # A plan's request was rolled back with the rest: its count and reasons are in the outcome's words.
    match = _APPROVALS.match(outcome.detail)
    return {"what": outcome.what, "why": match.group(2) if match else outcome.detail,
            "required_approvals": int(match.group(1)) if match else None, "change_request": None}


def _flag_plan(flag_changes: FlagChanges, before: dict[str, Any], requests: dict[int, ChangeRequest]) -> dict[str, Any]:
    outcomes = flag_changes.outcomes
    return {
        "flag": flag_changes.flag_key,
        "status": "new" if flag_changes.is_new else "changed" if flag_changes.changes else "unchanged",
        "changes": _field_diffs(flag_changes, {} if flag_changes.is_new else before),
        "notes": [{"text": note.text, "escalates": note.escalates} for note in flag_changes.notes],
        "applies_now": [o.what for o in outcomes if o.status == APPLIED],
        "waits_for_approval": [_waiting(o, requests) for o in outcomes if o.status == REQUESTED],
        "already_waiting": [_waiting(o, requests) for o in outcomes if o.status == WAITING],
    }


def _message(result: ImportResult, counts: dict[str, int]) -> str:
    if not result.changed_flags:
        return "No changes: the catalog already matches the document."
    if not result.written:
        return "Nothing to write: every change already waits for approval."
    held = f"{counts['waits_for_approval']} part(s) {'would wait' if result.dry_run else 'wait'} for approval"
    if result.dry_run:
        return f"{counts['applies_now']} part(s) would apply at once, {held}. Nothing was written (a plan)."
    return f"Applied {counts['applies_now']} part(s) of {len(result.changed_flags)} flag(s); {held}."


def _plan(request: HttpRequest, result: ImportResult, current: dict[str, dict[str, Any]]) -> dict[str, Any]:
    outcomes = [o for flag_changes in result.by_flag for o in flag_changes.outcomes]
    # Requests that exist: those already open, and those an apply opened (a plan's were rolled back).
    ids = {o.change_request_id for o in outcomes if o.change_request_id
           and (o.status == WAITING or (o.status == REQUESTED and not result.dry_run))}
    requests = {cr.pk: cr for cr in ChangeRequest.objects.filter(pk__in=ids)
                .select_related("project", "flag", "segment", "environment").order_by("pk")}
    flags = [_flag_plan(flag_changes, current.get(flag_changes.flag_key, {}), requests)
             for flag_changes in result.by_flag]
    counts = {name: sum(len(flag[name]) for flag in flags)
              for name in ("applies_now", "waits_for_approval", "already_waiting")}
    return {
        "project": result.project.key, "dry_run": result.dry_run, "applied": result.applied,
        "nothing_to_do": not result.changed_flags or not result.written, "fingerprint": result.fingerprint,
        "message": _message(result, counts),
        "summary": {"flags": len(result.by_flag), "changed": len(result.changed_flags), **counts},
        "flags": flags,
        "change_requests": [change_request_brief(request, cr) for cr in requests.values()],
    }


def _import(request: HttpRequest, project: Project, document: PlanIn, *, dry_run: bool,
            fingerprint: str = "") -> tuple[ImportResult, dict[str, Any]]:
    outline = _outline(document.document)
    if not outline:  # no contract at all (an empty file or list, a bare value, broken YAML): nothing to plan
        try:
            empty = yaml.load(document.document, Loader=OutlineLoader) in (None, [], "")  # noqa: S506 - safe loader
        except (yaml.YAMLError, ValueError, TypeError, RecursionError):
            empty = False  # broken YAML: the import says where
        if empty:
            raise ApiError(422, "invalid_document", "The document holds no contract: nothing to plan or apply.",
                           errors=[{"path": "", "message": "The document holds no contract."}])
    if errors := _nul_errors(document, outline):
        raise ApiError(422, "invalid_document", "The document cannot be stored as it is; nothing was written.",
                       errors=errors)
    current = _current(project, outline)
    result = import_document(project=project, text=document.document, actor=request.user,
                             reason=document.reason or (PLAN_REASON if dry_run else ""), dry_run=dry_run,
                             expected_fingerprint=fingerprint or None)
    if result.problems:
        count = len(result.problems)
        raise ApiError(422, "invalid_document", f"{count} problem{'s' if count != 1 else ''} in the document; "
                                                "nothing was written.", errors=_errors(result, outline))
    if result.stale:
        raise ApiError(409, "stale_plan", "The catalog changed since the plan you reviewed (its fingerprint no "
                                          "longer matches): plan again, review it, and apply with the new fingerprint.")
    return result, _plan(request, result, current)


def _importing_project(request: HttpRequest, project_key: str) -> Project:
    """The project, for a token with the write scope whose user may import there (as the console's page)."""
    needs(request, "write")
    project = project_for(request, project_key)
    permissions.IMPORT_CONTRACTS.require(request.user, project)
    return project


# --- endpoints -----------------------------------------------------------------------------------

@router.post("/projects/{project_key}/contracts/plan", response=_answers({200: ContractsPlan}),
             openapi_extra=_request_body(PlanIn),
             summary="Plan a flags-as-code document: the diff, what applies at once, what waits for approval")
def contracts_plan(request: HttpRequest, project_key: str, query: Query[PlanQuery]) -> Any:
    """A dry run of the import: validated, diffed and tried through the services, then rolled
    back. 200 with the plan; 422 with every problem by its path in the file."""
    project = _importing_project(request, project_key)
    _, plan = _import(request, project, _document(request, PlanIn, query), dry_run=True)
    return Status(200, plan)


@router.post("/projects/{project_key}/contracts/apply", response=_answers({200: ContractsPlan, 202: ContractsPlan}),
             openapi_extra=_request_body(ApplyIn),
             summary="Apply a flags-as-code document; 202 when part of it waits for approval")
def contracts_apply(request: HttpRequest, project_key: str, query: Query[ApplyQuery]) -> Any:
    """The plan, committed: what raises no risk applies at once, the rest opens change requests.
    200 when nothing waits for approval, 202 with the change requests otherwise; 422 (nothing
    written) on any problem; 409 when `fingerprint` names another diff than the catalog's now."""
    project = _importing_project(request, project_key)
    document = _document(request, ApplyIn, query)
    result, plan = _import(request, project, document, dry_run=False, fingerprint=document.fingerprint)
    waiting = any(o.status in (REQUESTED, WAITING) for flag_changes in result.by_flag for o in flag_changes.outcomes)
    return Status(202 if waiting else 200, plan)
