"""Flags as code: a flag's contract, variations and per-environment targeting as YAML in the
shape of the seed article's `ai_featureops_contract:`, exported and imported.

Vocabulary: *the contract* is a flag's metadata (the Flag model's contract fields: name,
owner, surface, metrics, lifetime, ...); *the document* (or *the file*) is the YAML that
carries contracts, variations and targeting; an *entry* is one flag's part of it, a mapping
whose only key is `ai_featureops_contract`. What an import would change in each flag is its
`FlagChanges` (not a plan: rollout plans live in `rollouts.plans`). User-visible text, the
commands (`export_contracts`, `import_contracts`) and the URLs still say "contracts" for
the entries, as the seed article does.

A file holds one entry or a YAML list of them; a `---` stream is refused. An import is
validated whole before anything is written (every problem names the flag and the path),
compared with the catalog (the diff), then applied in one transaction through the console's
own services: new flags through `flags.services.flag_create`, contract edits through
`contract_change_submit`, variation edits through `variation_change_submit` (new variations
through `variation_create`) and targeting through `targeting_change_submit`. So a risky
change to a governed environment becomes a change request, and everything else applies at
once, audited with the reason.

A dry run is the same import in a transaction that is always rolled back: the outcome it
reports (applied, or which change requests) comes from the services themselves, nothing
is committed and no notification leaves (they are sent on commit).

Keys absent from a file leave the catalog as it is; an import never deletes a flag or a
variation. An open change request that already proposes exactly what the file asks is not
opened again, so importing the same file twice changes nothing the second time.

Modules: `document` (the YAML shape, the export, parsing), `validation` (one entry
against the project), `importing` (the diff, applying through the services, the report),
`views` (the console's download and import pages).
"""

from __future__ import annotations

from rollouts.flags_as_code.document import (
    CONTRACT_KEY,
    MAX_IMPORT_CHARS,
    DocumentProblem,
    export_contracts,
    flag_entry,
    parse_document,
)
from rollouts.flags_as_code.importing import (
    APPLIED,
    REQUESTED,
    WAITING,
    FieldChange,
    FlagChanges,
    ImportResult,
    Outcome,
    import_contracts,
    render_report,
)

__all__ = [
    "APPLIED", "CONTRACT_KEY", "MAX_IMPORT_CHARS", "REQUESTED", "WAITING", "DocumentProblem", "FieldChange",
    "FlagChanges", "ImportResult", "Outcome", "flag_entry", "export_contracts", "import_contracts",
    "parse_document", "render_report",
]
