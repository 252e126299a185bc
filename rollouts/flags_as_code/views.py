"""Flags as code in the console: download a flag's (or the project's) document, and import
one: a first POST shows the diff with each problem beside its field and what would apply or
wait for approval; a second "Apply" POST, carrying the diff's fingerprint, applies it
through the same services as every other console page. Vocabulary: *the contract* is a
flag's metadata; *the document* (or *the file*) is the YAML that carries contracts,
variations and targeting. The pages, their URLs and the template still say "contracts"."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from flags import permissions
from flags.models import Flag, Project
from flags.shortcuts import project_page
from rollouts.flags_as_code.document import export_contracts
from rollouts.flags_as_code.importing import REQUESTED, FlagChanges, ImportResult, import_contracts
from rollouts.forms import ContractImportForm


def _yaml_download(text: str, filename: str) -> HttpResponse:
    response = HttpResponse(text, content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


@project_page("GET")
def contract_export(request: HttpRequest, project: Project, flag_key: str) -> HttpResponse:
    """Any member of the project may download a flag's contract."""
    if not Flag.objects.filter(project=project, key=flag_key).exists():
        raise Http404("No such flag.")
    text = export_contracts(project=project, flag_keys=[flag_key])
    return _yaml_download(text, f"{flag_key}.contract.yaml")


@project_page("GET")
def contracts_export(request: HttpRequest, project: Project) -> HttpResponse:
    return _yaml_download(export_contracts(project=project), f"{project.key}.contracts.yaml")


def _under(problem_path: str, change_path: str) -> bool:
    """Whether a problem belongs beside a diff row: the same path, or one inside the other."""
    if problem_path == change_path:
        return True
    return any(longer.startswith(shorter + sep) for longer, shorter in
               ((problem_path, change_path), (change_path, problem_path)) for sep in ".[")


def _flag_view(flag_changes: FlagChanges, dry_run: bool) -> dict[str, Any]:
    """A flag's diff rows, each with the problems of its field; problems no row shows go on top."""
    rows, placed = [], set()
    for change in flag_changes.changes:
        errors = [p for p in flag_changes.problems if p not in placed and _under(p.path, change.path)]
        placed.update(errors)
        rows.append({"change": change, "errors": errors})
    return {"changes": flag_changes, "rows": rows,
            "loose_problems": [p for p in flag_changes.problems if p not in placed],
            "outcomes": [{"status": o.status, "text": o.text(dry_run), "cr": o.change_request_id}
                         for o in flag_changes.outcomes]}


def _applied_messages(request: HttpRequest, result: ImportResult) -> None:
    flags = len(result.changed_flags)
    if not result.written:
        messages.info(request, "Nothing to write: every change in the file already waits for approval.")
        return
    messages.success(request, f"Imported {flags} flag{'s' if flags != 1 else ''}, with your reason in the audit "
                              "trail.")
    for flag_changes in result.changed_flags:
        for outcome in flag_changes.outcomes:
            if outcome.status == REQUESTED:
                messages.warning(request, f"{flag_changes.flag_key}: {outcome.text(dry_run=False)}")


@project_page("GET", "POST", rule=permissions.IMPORT_CONTRACTS)
def contracts_import(request: HttpRequest, project: Project) -> HttpResponse:
    form = ContractImportForm(request.POST or None, request.FILES or None)
    result, status = None, 200
    if request.method == "POST" and form.is_valid():
        applying = request.POST.get("action") == "apply"
        text = form.cleaned_data["text"]
        arguments = {"project": project, "text": text, "actor": request.user,
                     "reason": form.cleaned_data["reason"]}
        result = import_contracts(
            **arguments, dry_run=not applying, expected_fingerprint=form.cleaned_data["fingerprint"] if applying else None)
        if result.applied:
            _applied_messages(request, result)
            return redirect("flags:flag_list", project_key=project.key)
        if result.stale:
            messages.warning(request, "The catalog changed since the preview you approved: here is the diff as it "
                                      "stands now. Review it and apply again.")
            result, status = import_contracts(**arguments, dry_run=True), 409
        for problem in result.file_problems:
            form.add_error("reason" if problem.path == "reason" else "text", str(problem))
        # The Apply post sends the text again (even when it came from a file) with the diff's fingerprint.
        form.data = form.data.copy()
        form.data["text"], form.data["fingerprint"] = text, result.fingerprint
    if form.errors or (result and result.problems):
        status = 422
    return render(request, "rollouts/contracts_import.html", {
        "project": project, "form": form, "result": result,
        "by_flag": [_flag_view(flag_changes, dry_run=True) for flag_changes in result.by_flag] if result else [],
        "unchanged": [flag_changes.flag_key for flag_changes in result.by_flag
                      if not flag_changes.changes and not flag_changes.problems] if result else [],
        "can_apply": bool(result and not result.problems and result.written),
    }, status=status)
