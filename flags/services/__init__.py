"""Every write to the flag catalog. Each service takes keyword-only arguments and an explicit
actor, validates before saving, and writes its audit row in the same transaction.

Services apply changes; deciding *whether* a change may be applied directly (governed
environments, approvals) belongs to the callers: rollouts.change_control routes governed changes
through change requests and calls these same services when a request is applied.
"""

from __future__ import annotations

from flags.services._common import ConflictError
from flags.services.catalog import (
    FLAG_EDITABLE_FIELDS,
    environment_create,
    environment_govern,
    flag_change_validate,
    flag_create,
    flag_update,
    governed_served_variations,
    project_create,
    project_time_zone_set,
    variation_create,
    variation_delete,
    variation_update,
    variation_usages,
)
from flags.services.lifecycle import (
    LIFECYCLE_JOB,
    archive_problem,
    compute_stage,
    flag_archive,
    flag_lifecycle_recompute,
    flag_restore,
    retire_archived_flags,
    turn_on_problems,
)
from flags.services.members import flag_owner_permission_sync, membership_grant, membership_revoke
from flags.services.sdk_keys import SDK_KEY_PREFIX, hash_sdk_key, sdk_key_create, sdk_key_revoke
from flags.services.segments import (
    SEGMENT_EDITABLE_FIELDS,
    segment_create,
    segment_delete,
    segment_governed_usages,
    segment_proposal,
    segment_update,
    segment_usages,
)
from flags.services.targeting import targeting_proposal, targeting_update

__all__ = [
    "FLAG_EDITABLE_FIELDS", "LIFECYCLE_JOB", "archive_problem", "flag_archive", "flag_restore",
    "retire_archived_flags", "turn_on_problems", "SDK_KEY_PREFIX", "ConflictError", "compute_stage",
    "environment_create", "environment_govern", "flag_create", "flag_lifecycle_recompute", "flag_change_validate", "flag_update", "governed_served_variations", "hash_sdk_key",
    "flag_owner_permission_sync", "membership_grant", "membership_revoke", "project_create", "project_time_zone_set", "sdk_key_create", "sdk_key_revoke", "segment_create",
    "segment_delete", "SEGMENT_EDITABLE_FIELDS", "segment_governed_usages", "segment_proposal", "segment_update", "segment_usages", "targeting_proposal", "targeting_update", "variation_create",
    "variation_delete", "variation_update", "variation_usages",
]
