"""A contract lowering the risk rank of a variation served in production (issue 15): the rank
waits in a change request, the rest of the variation saves, and the console preview answers."""

from __future__ import annotations

import pytest

from flags.models import Flag
from rollouts.models import ChangeRequest
from tests.rollouts.flags_as_code.support import IMPORT_URL, as_yaml, body, catalog_state, run
from tests.rollouts.support import TOOL_MODE, user

pytestmark = pytest.mark.django_db


def _lowered(demo) -> tuple[dict, str, int]:
    contract = body(demo, TOOL_MODE)
    served = next(v for v in contract["variations"] if v["risk_rank"] > 0 and v["key"] == "approval_required")
    old_rank = served["risk_rank"]
    served["risk_rank"] = 0
    served["name"] = served["name"] + " (renamed)"
    return contract, served["key"], old_rank


def test_import__lowered_rank_of_served_variation__held_in_request_name_saved(demo) -> None:
    contract, key, old_rank = _lowered(demo)
    result = run(demo, as_yaml(contract))
    assert result.problems == []
    variation = Flag.objects.get(key=TOOL_MODE).variations.get(key=key)
    change_request = ChangeRequest.objects.get()
    assert change_request.proposed["risk_ranks"] == {key: 0}
    assert variation.risk_rank == old_rank and variation.name.endswith("(renamed)")
    assert [o.change_request_id for o in result.change_requests] == [change_request.pk]


def test_import__lowered_rank_same_file_twice__request_not_submitted_again(demo) -> None:
    contract, _, _ = _lowered(demo)
    run(demo, as_yaml(contract))
    before = catalog_state()
    result = run(demo, as_yaml(contract))
    assert result.problems == [] and ChangeRequest.objects.count() == 1
    assert catalog_state()["requests"] == before["requests"]


def test_import_page__lowered_rank_preview__200_nothing_written(client, demo) -> None:
    client.force_login(user("owner"))
    contract, _, _ = _lowered(demo)
    before = catalog_state()
    preview = client.post(IMPORT_URL, {"text": as_yaml(contract), "reason": "Rank review", "action": "preview"})
    assert preview.status_code == 200 and catalog_state() == before
