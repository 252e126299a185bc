"""Plain-JSON states of catalog rows (a flag's contract, a variation, targeting, a segment), as
audit rows record them before and after a change and as change requests bind them. Not the
evaluation snapshots: those are snapshot_builder.py and snapshot_store.py."""

from __future__ import annotations

from typing import Any

from flags.models import Flag, Segment, Targeting, Variation


def flag_contract(flag: Flag) -> dict[str, Any]:
    return {
        "key": flag.key,
        "name": flag.name,
        "description": flag.description,
        "behavior_surface": flag.behavior_surface,
        "value_type": flag.value_type,
        "json_schema": flag.json_schema,
        "fallback_variation": flag.fallback_variation.key if flag.fallback_variation_id else None,
        "owner_user": flag.owner_user.get_username() if flag.owner_user_id else None,
        "owner_team": flag.owner_team,
        "lifetime": flag.lifetime,
        "review_date": flag.review_date.isoformat() if flag.review_date else None,
        "cleanup_rule": flag.cleanup_rule,
        "primary_metric": flag.primary_metric,
        "guardrail_metrics": list(flag.guardrail_metrics),
        "rollback_action": flag.rollback_action,
        "first_audience": flag.first_audience,
        "tags": sorted(tag.name for tag in flag.tags.all()) if flag.pk else [],
        "stage": flag.stage,
    }


def variation_state(variation: Variation) -> dict[str, Any]:
    return {
        "key": variation.key,
        "name": variation.name,
        "value": variation.value,
        "description": variation.description,
        "risk_rank": variation.risk_rank,
    }


def targeting_state(targeting: Targeting) -> dict[str, Any]:
    return {
        "enabled": targeting.enabled,
        "targets": targeting.targets,
        "rules": targeting.rules,
        "default_serve": targeting.default_serve,
        "assignment_unit": targeting.assignment_unit,
        "version": targeting.version,
    }


def segment_state(segment: Segment) -> dict[str, Any]:
    return {
        "key": segment.key,
        "name": segment.name,
        "description": segment.description,
        "included_keys": segment.included_keys,
        "excluded_keys": segment.excluded_keys,
        "rules": segment.rules,
    }
