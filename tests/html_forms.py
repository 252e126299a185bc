"""Forms as a browser would submit them, read from rendered HTML: text inputs with their value,
checked boxes and radios, textareas as shown, each select's selected option (else its first).
Tests post these back to submit a page "as shown" and change only what the test is about."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any


class _Fields(HTMLParser):
    """Every field of the document, grouped by the post form around it (None: outside any)."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[list[tuple[str, str]]] = [[]]
        self._current = self.groups[0]
        self._select: str | None = None
        self._options: list[tuple[str, bool]] = []
        self._textarea: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {key: value or "" for key, value in attrs}
        name = a.get("name")
        if tag == "form" and a.get("method", "").lower() == "post":
            self._current = []
            self.groups.append(self._current)
        elif tag == "input" and name and "disabled" not in a:
            kind = a.get("type", "text")
            if kind in ("checkbox", "radio"):
                if "checked" in a:
                    self._current.append((name, a.get("value", "on")))
            elif kind not in ("submit", "button", "reset"):
                self._current.append((name, a.get("value", "")))
        elif tag == "textarea" and name:
            self._textarea = [name, ""]
        elif tag == "select" and name:
            self._select, self._options = name, []
        elif tag == "option" and self._select:
            self._options.append((a.get("value", ""), "selected" in a))

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._textarea[1] += data  # character references already decoded (convert_charrefs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea" and self._textarea is not None:
            # Browsers drop the one newline Django writes after <textarea>.
            self._current.append((self._textarea[0], self._textarea[1].removeprefix("\n")))
            self._textarea = None
        elif tag == "select" and self._select:
            chosen = [value for value, selected in self._options if selected] or [v for v, _ in self._options[:1]]
            self._current.extend((self._select, value) for value in chosen)
            self._select = None
        elif tag == "form" and self._current is not self.groups[0]:
            self._current = self.groups[0]


def _as_post(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """A field once → its value; a repeated name → the list of its values (as the test client posts)."""
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            found[name] = [*found[name], value] if isinstance(found[name], list) else [found[name], value]
        else:
            found[name] = value
    return found


def fields(html: str) -> dict[str, Any]:
    """Every field of a page or fragment, whatever form holds it."""
    parser = _Fields()
    parser.feed(html)
    return _as_post([pair for group in parser.groups for pair in group])


def form_as_shown(html: str, holding: str) -> dict[str, Any]:
    """The post form of the page that has a field named `holding`, as a browser would submit it."""
    parser = _Fields()
    parser.feed(html)
    for group in parser.groups[1:]:
        if any(name == holding for name, _ in group):
            return _as_post(group)
    raise AssertionError(f"no post form with a field {holding!r} on the page")
