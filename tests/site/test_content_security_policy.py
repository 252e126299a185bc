"""The Content-Security-Policy (issue 14, item 2), without a browser: the header every console
and admin page carries, htmx's configuration under it, and a scan of every template for
inline script, so that none can come back. tests/browser/test_content_security_policy.py
walks the same in Chromium."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model

from flags.demo import seed_demo
from flags.models import Environment, SdkKey

PROJECT = "support-assistant"
PROFILE_FLAG = "support_assistant_profile"
EXPECTED_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}


def parse_policy(header: str) -> dict[str, list[str]]:
    directives = [directive.split() for directive in header.split(";") if directive.strip()]
    return {name: sources for name, *sources in directives}


# --- the header -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "username", "htmx", "status"), [
    ("/login/", None, False, 200),
    ("/", "admin", False, 200),
    (f"/p/{PROJECT}/", "owner", False, 200),
    (f"/p/{PROJECT}/?surface=agent_tools", "owner", True, 200),  # the flag-table partial
    (f"/p/{PROJECT}/flags/{PROFILE_FLAG}/", "owner", False, 200),
    (f"/p/{PROJECT}/sdk-keys/", "admin", False, 200),
    (f"/p/{PROJECT}/sdk-keys/", "owner", False, 403),  # the "Not allowed" page
    (f"/p/{PROJECT}/no-such-page/", "owner", False, 404),
    ("/admin/login/", None, False, 200),
    ("/admin/auth/group/add/", "admin", False, 200),
])
def test_csp_header__console_and_admin_pages__scripts_from_self_only(
    client, path: str, username: str | None, htmx: bool, status: int,
) -> None:
    # Given the demo catalog, and a signed-in user where the page needs one
    seed_demo()
    if username:
        client.force_login(get_user_model().objects.get(username=username))

    # When the page is requested (as htmx would, for a partial)
    response = client.get(path, headers={"HX-Request": "true"} if htmx else {})

    # Then it carries the policy: scripts from our own origin only, no inline code, no eval
    assert response.status_code == status
    policy = parse_policy(response.headers["Content-Security-Policy"])
    assert policy == EXPECTED_POLICY
    assert "'unsafe-inline'" not in policy["script-src"] + policy["default-src"]
    assert not any("'unsafe-eval'" in sources for sources in policy.values())


@pytest.mark.django_db
def test_base_template__htmx_config__no_eval_no_swapped_scripts_no_injected_styles(client) -> None:
    # Given any console page (the login page extends base.html too)
    page = client.get("/login/").content.decode()

    # Then htmx is configured for the policy, and the one script of our own loads from static
    meta = re.search(r"<meta name=\"htmx-config\" content='([^']*)'>", page)
    assert meta is not None
    config = json.loads(html.unescape(meta.group(1)))
    assert (config["allowEval"], config["allowScriptTags"], config["includeIndicatorStyles"]) == (False, False, False)
    assert re.search(r'<script src="/static/js/console\.js" defer></script>', page)


@pytest.mark.django_db
def test_sdk_keys_page__name_with_quotes_and_markup__escaped_into_data_confirm_with_no_handler(client) -> None:
    # Given a key whose name would break out of a JavaScript string, or out of an attribute
    project, _ = seed_demo()
    client.force_login(get_user_model().objects.get(username="admin"))
    production = Environment.objects.get(project=project, key="production")
    name = "x');alert(1);('\"><script>alert(2)</script>"
    client.post(f"/p/{PROJECT}/sdk-keys/", {"environment": production.pk, "name": name})
    assert SdkKey.objects.filter(name=name).exists()

    # When the SDK keys page lists it
    page = client.get(f"/p/{PROJECT}/sdk-keys/").content.decode()

    # Then the revoke form asks through data-confirm, with every quote and bracket escaped
    escaped = "x&#x27;);alert(1);(&#x27;&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;"
    assert f'data-confirm="Revoke {escaped}? Applications using it are refused within a second."' in page
    assert "onsubmit" not in page and "<script>alert" not in page


# --- no inline script in any template ----------------------------------------------------


# Each: what it finds, and why the policy refuses it (or htmx would need eval for it).
INLINE_SCRIPT_PATTERNS = [
    (re.compile(r"\son[a-z]+\s*=", re.IGNORECASE), "an inline event handler (on…=)"),
    (re.compile(r"javascript:", re.IGNORECASE), "a javascript: URL"),
    (re.compile(r"<script\b(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE), "a <script> without src"),
    (re.compile(r"<script\b[^>]*>[^<]*\S[^<]*</script>", re.IGNORECASE), "a <script> with content"),
    (re.compile(r"\b(data-)?hx-on\b", re.IGNORECASE), "hx-on (htmx evaluates it)"),
    (re.compile(r"\b(data-)?hx-vars\b", re.IGNORECASE), "hx-vars (htmx evaluates it)"),
    (re.compile(r"\bhx-(vals|headers)\s*=\s*[\"']\s*(js|javascript):", re.IGNORECASE), "a js: value (htmx evaluates it)"),
    (re.compile(r"\bhx-trigger\s*=\s*\"[^\"]*\[", re.IGNORECASE), "an hx-trigger filter [...] (htmx evaluates it)"),
]


TEMPLATE_COMMENT = re.compile(r"\{#.*?#\}|\{%\s*comment\b.*?%\}.*?\{%\s*endcomment\s*%\}", re.DOTALL)


def inline_script_findings(text: str) -> list[tuple[int, str, str]]:
    """(line, what, the text found) for each inline script in a template's source. Template
    comments never reach the page, so they are blanked first (their lines kept)."""
    text = TEMPLATE_COMMENT.sub(lambda comment: "\n" * comment.group(0).count("\n"), text)
    findings = []
    for pattern, what in INLINE_SCRIPT_PATTERNS:
        for match in pattern.finditer(text):
            findings.append((text.count("\n", 0, match.start()) + 1, what, match.group(0)))
    return findings


def project_templates() -> list[Path]:
    """Every template the project ships: templates/ and each of its own apps' templates/."""
    folders = [Path(folder) for folder in settings.TEMPLATES[0]["DIRS"]]
    folders += [Path(app.path) / "templates" for app in apps.get_app_configs()
                if Path(app.path).is_relative_to(settings.BASE_DIR) and ".venv" not in Path(app.path).parts]
    return sorted(path for folder in folders if folder.is_dir() for path in folder.rglob("*.html"))


@pytest.mark.parametrize("snippet", [
    """<form onsubmit="return confirm('Revoke {{ k.name }}?')">""",
    """<button type="button" ONCLICK='this.remove()'>""",
    """<a href="javascript:history.back()">""",
    """<script>window.config = {};</script>""",
    """<script nonce="{{ csp_nonce }}">go()</script>""",
    """<script type="module">""",
    """<button hx-on:click="go()">""",
    """<div data-hx-on-htmx-after-swap="go()">""",
    """<div hx-vars="a:1">""",
    """<div hx-vals='js:{a: 1}'>""",
    """<input hx-trigger="keyup[key=='Enter']">""",
])
def test_inline_script_scan__known_forms__each_found(snippet: str) -> None:
    assert inline_script_findings(snippet), f"the scan misses {snippet}"


def test_inline_script_scan__what_the_console_writes__nothing_found() -> None:
    # data-confirm text, a static script, hx-confirm, a trigger without filter, JSON hx-vals
    allowed = """<form data-confirm="Revoke it? Later, one can only recreate it.">
      <script src="{% static 'js/console.js' %}" defer></script>
      <button hx-post="/x/" hx-confirm="Turn it on?" hx-trigger="change, keyup changed delay:300ms from:#q"
              hx-vals='{"version": "3"}'>Turn on</button>"""
    assert inline_script_findings(allowed) == []
    assert inline_script_findings("{# no hx-on, no <script> here #}{% comment %}onclick=x{% endcomment %}") == []


def test_templates__every_project_template__no_inline_script_handler_or_eval() -> None:
    # Given every template the project ships
    templates = project_templates()
    assert Path(settings.BASE_DIR, "templates", "flags", "sdk_keys.html") in templates

    # Then none holds inline script, an inline handler, a javascript: URL or htmx eval
    findings = [f"{path.relative_to(settings.BASE_DIR)}:{line}: {what}: {found!r}"
                for path in templates for line, what, found in inline_script_findings(path.read_text())]
    assert findings == [], "\n".join(findings)
