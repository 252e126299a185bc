"""The approval policy page (rollouts/views.py): admins edit each environment's numbers, others read them."""

from __future__ import annotations

import pytest

from tests.rollouts.support import as_user, escalate

pytestmark = pytest.mark.django_db


def test_approval_policy__admin_edits_others_read(client, demo) -> None:
    url = "/p/support-assistant/approval-policy/"
    page = as_user(client, "pm").get(url).content.decode()
    assert "Risk escalations" in page and "Save Production" not in page
    assert client.post(url, {"environment": "production", "production-approvals_for_escalation": "1"}).status_code == 403
    as_user(client, "admin")
    data = {"environment": "production", "production-approvals_for_escalation": "3",
            "production-approvals_otherwise": "4", "production-expire_after_days": "7"}
    bad = client.post(url, data)
    assert bad.status_code == 422 and "at least as many approvals" in bad.content.decode()
    data["production-approvals_otherwise"] = "1"
    assert client.post(url, data).status_code == 302
    assert escalate().required_approvals == 3

