"""Flags as code: a flag's contract, variations and per-environment targeting as YAML in the
shape of the seed article's `ai_featureops_contract:`, exported and imported.

A file holds one contract (a mapping whose only key is `ai_featureops_contract`) or a YAML
list of them; a `---` stream is refused. An import is validated whole before anything is
written (every problem names the flag and the path), compared with the catalog (the diff),
then applied in one transaction through the console's own services: new flags through
`flags.services.flag_create`, contract edits through `contract_change_submit`, variation
edits through `variation_change_submit` (new variations through `variation_create`) and
targeting through `targeting_change_submit`. So a risky change to a governed environment
becomes a change request, and everything else applies at once, audited with the reason.

A dry run is the same import in a transaction that is always rolled back: the outcome it
reports (applied, or which change requests) comes from the services themselves, nothing
is committed and no notification leaves (they are sent on commit).

Keys absent from a file leave the catalog as it is; an import never deletes a flag or a
variation. An open change request that already proposes exactly what the file asks is not
opened again, so importing the same file twice changes nothing the second time.

Modules: `document` (the YAML shape, the export, parsing), `validation` (one contract
against the project), `importing` (the diff, applying through the services, the report).
"""

from __future__ import annotations

from rollouts.contracts.document import (
    CONTRACT_KEY,
    MAX_IMPORT_CHARS,
    ContractProblem,
    contract_document,
    export_contracts,
    parse_contracts,
)
from rollouts.contracts.importing import (
    APPLIED,
    REQUESTED,
    WAITING,
    FieldChange,
    FlagPlan,
    ImportResult,
    Outcome,
    import_contracts,
    render_report,
)

__all__ = [
    "APPLIED", "CONTRACT_KEY", "MAX_IMPORT_CHARS", "REQUESTED", "WAITING", "ContractProblem", "FieldChange",
    "FlagPlan", "ImportResult", "Outcome", "contract_document", "export_contracts", "import_contracts",
    "parse_contracts", "render_report",
]
