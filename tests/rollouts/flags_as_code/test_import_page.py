"""Flags as code in the console: the import page previews the diff, applies it with the
previewed fingerprint (409 when the catalog moved), shows each problem beside its field,
takes an uploaded file, and is for editors only."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from audit.models import AuditEvent
from flags import services as flag_services
from flags.models import Flag
from rollouts.models import ChangeRequest
from tests.factories import TEST_ACTOR
from tests.rollouts.flags_as_code.support import IMPORT_URL, as_yaml, body, catalog_state
from tests.rollouts.support import BETA_WRITE, TOOL_MODE, production, user

pytestmark = pytest.mark.django_db


def test_import_page__preview_then_apply__change_request_opened(client, demo) -> None:
    # Given the owner pasting a risky production change and a rename
    client.force_login(user("owner"))
    contract = body(demo, TOOL_MODE)
    contract["name"] = "Support agent tool authority"
    contract["targeting"]["production"]["rules"].append(BETA_WRITE)
    data = {"text": as_yaml(contract), "reason": "Beta accounts asked for ticket writes", "action": "preview"}
    before = catalog_state()

    # When the first POST previews it
    preview = client.post(IMPORT_URL, data)

    # Then the diff and the verdict are shown, an Apply button carries the fingerprint, and nothing is written
    page = preview.content.decode()
    assert preview.status_code == 200 and catalog_state() == before
    assert "Support agent tool mode" in page and "Support agent tool authority" in page
    assert "targeting.production.rules[1]" in page and "would wait for approval" in page
    assert 'value="apply"' in page
    fingerprint = preview.context["result"].fingerprint
    assert f'value="{fingerprint}"' in page

    # When the second POST applies it
    applied = client.post(IMPORT_URL, {**data, "action": "apply", "fingerprint": fingerprint})

    # Then it redirects to the flag list, the rename is saved and production waits in a change request
    assert applied.status_code == 302 and applied["Location"] == "/p/support-assistant/"
    change_request = ChangeRequest.objects.get()
    assert Flag.objects.get(key=TOOL_MODE).name == "Support agent tool authority"
    assert production().rules[-1]["id"] == "internal"
    shown = client.get(applied["Location"]).content.decode()
    assert f"waits for approval in CR-{change_request.pk}" in shown
    assert AuditEvent.objects.get(action="contracts.imported").reason == "Beta accounts asked for ticket writes"


def test_import_page__catalog_moved_since_the_preview__409_and_nothing_applied(client, demo) -> None:
    client.force_login(user("owner"))
    contract = body(demo, TOOL_MODE)
    contract["name"] = "Renamed by the file"
    data = {"text": as_yaml(contract), "reason": "rename"}
    fingerprint = client.post(IMPORT_URL, data).context["result"].fingerprint
    # someone else renames the flag in between
    flag_services.flag_update(flag=Flag.objects.get(key=TOOL_MODE), actor=TEST_ACTOR, description="changed meanwhile")
    response = client.post(IMPORT_URL, {**data, "action": "apply", "fingerprint": fingerprint})
    assert response.status_code == 409 and "The catalog changed since the preview" in response.content.decode()
    assert Flag.objects.get(key=TOOL_MODE).name == "Support agent tool mode"
    assert not AuditEvent.objects.filter(action="contracts.imported").exists()


def test_import_page__problems_beside_their_field__422(client, demo) -> None:
    client.force_login(user("owner"))
    contract = body(demo, TOOL_MODE)
    contract["targeting"]["production"]["rules"][0]["serve"] = {"variation": "admin"}
    response = client.post(IMPORT_URL, {"text": as_yaml(contract), "reason": "x"})
    page = response.content.decode()
    assert response.status_code == 422 and 'value="apply"' not in page
    # the problem sits in the row of the field it is about
    row = page[page.index("targeting.production.rules[0].serve.variation"):]
    assert row.index("unknown variation &#x27;admin&#x27;") < row.index("</tr>")
    broken = client.post(IMPORT_URL, {"text": "ai_featureops_contract: [\n", "reason": "x"})
    assert broken.status_code == 422 and "Not valid YAML" in broken.content.decode()
    empty = client.post(IMPORT_URL, {"text": "", "reason": "x"})
    assert empty.status_code == 422 and "Paste contracts or choose a file." in empty.content.decode()


def test_import_page__upload_a_file__text_kept_for_apply(client, demo) -> None:
    client.force_login(user("owner"))
    contract = body(demo, TOOL_MODE)
    contract["name"] = "From a file"
    upload = SimpleUploadedFile("tool_mode.yaml", as_yaml(contract).encode(), content_type="application/yaml")
    response = client.post(IMPORT_URL, {"upload": upload, "reason": "from a file"})
    assert response.status_code == 200 and "From a file" in response.content.decode()
    assert response.context["form"].data["text"].startswith("- ai_featureops_contract:")


def test_import_page__editors_only(client, demo) -> None:
    for name in ("pm", "auditor", "operator"):
        client.force_login(user(name))
        assert client.get(IMPORT_URL).status_code == 403
        assert client.post(IMPORT_URL, {"text": "x", "reason": "y"}).status_code == 403
    client.force_login(user("owner"))
    assert client.get(IMPORT_URL).status_code == 200
