"""SDK keys in the catalog services (flags/services/sdk_keys.py): the raw key shown once, only
its hash stored or audited; revocation audited."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from flags import services
from tests.factories import TEST_ACTOR, make_project

pytestmark = pytest.mark.django_db


def test_sdk_key_create__raw_key_returned_once__only_hash_stored() -> None:
    project = make_project()
    environment = project.environments.get(key="production")
    sdk_key, raw_key = services.sdk_key_create(environment=environment, name="api", actor=TEST_ACTOR)
    assert raw_key.startswith("fo_srv_") and len(raw_key) > 40
    assert sdk_key.key_hash == services.hash_sdk_key(raw_key) and raw_key not in sdk_key.key_hash
    assert raw_key.startswith(sdk_key.prefix)
    event = AuditEvent.objects.get(action="sdk_key.created")
    assert raw_key not in str(event.after)
    services.sdk_key_revoke(sdk_key=sdk_key, actor=TEST_ACTOR)
    sdk_key.refresh_from_db()
    assert sdk_key.revoked_at is not None
    assert AuditEvent.objects.filter(action="sdk_key.revoked").count() == 1

