"""The console's icon: pages name it, and /favicon.ico (asked for by whatever does not read the
page's <link rel="icon">) answers with it instead of a 404."""

from __future__ import annotations

import pytest
from django.contrib.staticfiles import finders


@pytest.mark.django_db
def test_favicon__ico_path_redirects_to_the_icon_pages_name(client, django_user_model) -> None:
    # Given a signed-in person's page
    user = django_user_model.objects.create_user("visitor", password="x")
    client.force_login(user)
    page = client.get("/").content.decode()
    # When the browser asks for /favicon.ico
    response = client.get("/favicon.ico")
    # Then it is sent, permanently, to the icon the page links, and that file exists
    assert response.status_code == 301
    assert f'<link rel="icon" href="{response["Location"]}"' in page
    assert finders.find(response["Location"].removeprefix("/static/")) is not None
