"""A property of the served-state guard: whatever sequence of edits goes through whichever
service, production changes what it serves only as an applied change request approved it,
as incident mode restores what was serving, or in a way the policy says raises no risk.

Each example walks up to twelve steps over the demo project (its three flags, two segments
and its people) through the catalog services directly and through change control:
submissions, approvals, applies, the kill switch and incident mode. Arguments are drawn from
the demo's own flags, variations, segments and account keys, so most steps are valid; the
invalid ones must be refused with a ValidationError and leave nothing behind. A submission
may be followed by its approvals, an edit of what it would serve, and its apply.

After every step, for every governed (flag, environment) pair, the served-state hash is
unchanged unless
  (a) the step applied a change request (its status became "applied") bound to exactly the
      new hash for that pair; the request must also have had the approvals its environment's
      policy requires for the served states it was bound to, as `classify_served_change`
      judges them against what was served when it was submitted (an escalation needs
      `approvals_for_escalation`), counted here from the approval rows;
  (b) `classify_served_change(before, after)` finds no risk in the change; or
  (c) the step lifted incident mode and the pair is back on exactly the hash it served when
      incident mode stopped it (as this walk saw it before incident mode started).
A refused step changes no hash, no audit row, no change request status and no approval; a
step that changes a hash writes at least one audit row.

The steps are drawn by tests/flags/served_state/walk_steps.py; tests/flags/served_state/walks.py
runs them and checks the above after each one.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, example, given, settings

from flags.models import Project
from tests.flags.served_state.walk_steps import INCIDENT_FALLBACK, TOOL_MODE, WALKS
from tests.flags.served_state.walks import run_walk

pytestmark = pytest.mark.django_db
ESCALATE_TOOL_MODE = {
    "step": "targeting_change_submit", "flag": TOOL_MODE, "environment": "production", "actor": "owner",
    "reason": "property walk", "aim": None,
    "changes": {"rules": ("append", {"id": "beta", "clauses": [{"op": "in_segment", "values": ["beta_accounts"]}],
                                     "serve": {"variation": "write"}})},
}


# The demo is seeded once per test by a function-scoped fixture; every example runs inside a
# savepoint that is rolled back, so each one starts from the same seeded demo (which is why the
# function-scoped-fixture health check can be suppressed).
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=WALKS)
# Walks worth running every time, whatever is drawn:
# - write tools for beta accounts (an escalation: two approvals), approved and applied;
@example(steps=[ESCALATE_TOOL_MODE | {"then": "approve_and_apply"}])
# - the same, with the value of "write" edited between the approvals and the apply (it is not
#   served yet, so the edit applies at once; the apply must then refuse what nobody approved);
@example(steps=[ESCALATE_TOOL_MODE | {"then": ("approve_edit_apply", {
    "step": "variation_update", "flag": TOOL_MODE, "variation": "write", "changes": {"value": ("tweak", "write")},
    "actor": "owner", "aim": None})}])
# - incident mode in production, then lifted: each flag back on exactly what it served;
@example(steps=[{"step": "incident_start", "environment": "production", "surfaces": []}, {"step": "incident_lift"}])
# - found by this test: a flag-wide request moving production's fallback to a riskier variation
#   (an escalation under the served-state policy) applied with one approval.
@example(steps=[{"step": "contract_change_submit", "flag": INCIDENT_FALLBACK,
                 "changes": {"fallback_variation_key": "cached_answer"}, "actor": "owner",
                 "then": "approve_once_and_apply", "aim": None}])
def test_served_state__any_sequence_of_edits_through_any_service__production_moves_only_as_approved_or_safer(
        demo: Project, steps: list[dict[str, Any]]) -> None:
    # Given the seeded demo (production governed), When the steps run one by one,
    # Then after each one every production served state is unchanged, approved, restored or safer
    with transaction.atomic():
        try:
            run_walk(demo, steps)
        finally:
            transaction.set_rollback(True)

