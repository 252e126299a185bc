"""What a change request is about and what approvals bind: the current content of what it
changes (a targeting, a flag's variations/fallback/schema, a segment), how a proposal is
classified, the served states it produces in each governed environment, and the diff hash
that ties approvals to exactly those. Also how a request is read under its row lock.
"""

from __future__ import annotations

import hashlib
from typing import Any

from audit.chain import canonical_json
from flags import services as flag_services
from flags.models import Flag, Segment, Targeting
from flags.row_states import targeting_state
from flags.served_state.guard import (
    Overrides,
    ServedState,
    pair_key,
    served_states,
)
from flags.served_state.policy import (
    Classification,
    classify_served_change,
    classify_targeting_change,
)
from rollouts.models import ChangeRequest


def targeting_content(targeting: Targeting) -> dict[str, Any]:
    return {k: v for k, v in targeting_state(targeting).items() if k != "version"}


def served_pair(targeting: Targeting, proposed: dict[str, Any]) -> tuple[ServedState, ServedState] | None:
    """What a governed environment serves now, and would serve with `proposed` as its
    targeting (None outside governed environments)."""
    key = pair_key(targeting.flag_id, targeting.environment_id)
    project_id = targeting.environment.project_id
    before = served_states(project_id=project_id, flag_ids=[targeting.flag_id]).get(key)
    after = served_states(project_id=project_id, flag_ids=[targeting.flag_id],
                          overrides=Overrides(targeting={key: proposed})).get(key)
    return (before, after) if before is not None and after is not None else None


def classify(targeting: Targeting, proposed: dict[str, Any]) -> Classification:
    """In a governed environment the whole served state is compared (targeting, reached
    segments, values, fallback); elsewhere only the targeting, for rollout stages that ask
    for approval whatever the environment."""
    pair = served_pair(targeting, proposed)
    if pair is not None:
        return classify_served_change(before=pair[0].state, after=pair[1].state)
    flag = targeting.flag
    ranks = dict(flag.variations.values_list("key", "risk_rank"))
    return classify_targeting_change(current=targeting_content(targeting), proposed=proposed, risk_ranks=ranks,
                                     fallback=flag.fallback_variation.key)


def _diff_hash(base_version: int, proposed: dict[str, Any], variations: dict[str, Any] | None = None,
               served: dict[str, str] | None = None) -> str:
    """What an approval binds: the proposal, and the served state it produces in each
    governed environment."""
    payload = {"base": base_version, "proposed": proposed, "variations": variations or {}, "served": served or {}}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def bind(change_request: ChangeRequest, results: dict[str, ServedState]) -> None:
    """Bind a request to the served states it produces; approvals bind its diff hash."""
    change_request.served_hashes = {key: served.hash for key, served in results.items()}
    change_request.served_states = {key: served.state for key, served in results.items()}
    change_request.diff_hash = _diff_hash(change_request.base_version, change_request.proposed,
                                          change_request.variations_at_request, change_request.served_hashes)


def flag_content(flag: Flag, parts: dict[str, Any]) -> dict[str, Any]:
    """The current values of the parts a flag-wide proposal touches."""
    state: dict[str, Any] = {}
    if "variations" in parts:
        values = dict(flag.variations.filter(key__in=list(parts["variations"])).values_list("key", "value"))
        state["variations"] = {key: values.get(key) for key in parts["variations"]}
    if "fallback_variation" in parts:
        state["fallback_variation"] = flag.fallback_variation.key
    if "json_schema" in parts:
        state["json_schema"] = flag.json_schema
    if "risk_ranks" in parts:
        ranks = dict(flag.variations.filter(key__in=list(parts["risk_ranks"])).values_list("key", "risk_rank"))
        state["risk_ranks"] = {key: ranks.get(key) for key in parts["risk_ranks"]}
    return state


def segment_content(segment: Segment) -> dict[str, Any]:
    return {name: getattr(segment, name) for name in flag_services.SEGMENT_EDITABLE_FIELDS}


def locked(change_request: ChangeRequest) -> ChangeRequest:
    return (ChangeRequest.objects.select_for_update(of=("self",))
            .select_related("project", "flag", "environment").get(pk=change_request.pk))
