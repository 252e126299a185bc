"""Plain-JSON states of catalog rows (a flag's contract, a variation, targeting, a segment), as
audit rows record them before and after a change and as change requests bind them. Not the
evaluation snapshots: those are snapshot_builder.py and snapshot_store.py."""

from __future__ import annotations

from typing import Any

from django.db import models

from flags.models import Flag, Segment, Targeting, Variation

# Each state's keys, in order; a key names the row's attribute of that name, unless the state's
# function computes it (references by key or name, dates as ISO text, tags sorted).
FLAG_CONTRACT_KEYS = (
    "key", "name", "description", "behavior_surface", "value_type", "json_schema", "fallback_variation",
    "owner_user", "owner_team", "lifetime", "review_date", "cleanup_rule", "primary_metric", "guardrail_metrics",
    "rollback_action", "first_audience", "tags", "stage",
)
VARIATION_KEYS = ("key", "name", "value", "description", "risk_rank")
TARGETING_KEYS = ("enabled", "targets", "rules", "default_serve", "assignment_unit", "version")
SEGMENT_KEYS = ("key", "name", "description", "included_keys", "excluded_keys", "rules")


def _state(row: models.Model, keys: tuple[str, ...], **computed: Any) -> dict[str, Any]:
    return {key: computed[key] if key in computed else getattr(row, key) for key in keys}


def flag_contract(flag: Flag) -> dict[str, Any]:
    return _state(
        flag, FLAG_CONTRACT_KEYS,
        fallback_variation=flag.fallback_variation.key if flag.fallback_variation_id else None,
        owner_user=flag.owner_user.get_username() if flag.owner_user_id else None,
        review_date=flag.review_date.isoformat() if flag.review_date else None,
        guardrail_metrics=list(flag.guardrail_metrics),
        tags=sorted(tag.name for tag in flag.tags.all()) if flag.pk else [],
    )


def variation_state(variation: Variation) -> dict[str, Any]:
    return _state(variation, VARIATION_KEYS)


def targeting_state(targeting: Targeting) -> dict[str, Any]:
    return _state(targeting, TARGETING_KEYS)


def segment_state(segment: Segment) -> dict[str, Any]:
    return _state(segment, SEGMENT_KEYS)
