"""A small semantic-version parser (semver.org 2.0), enough to compare versions in clauses."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEMVER = re.compile(
    r"^v?(?P<major>0|[1-9]\d{0,17})(?:\.(?P<minor>0|[1-9]\d{0,17}))?(?:\.(?P<patch>0|[1-9]\d{0,17}))?"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


@dataclass(frozen=True, order=False)
class SemVer:
    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...]

    def _key(self) -> tuple:
        # A version without a prerelease sorts after every prerelease of the same core.
        pre = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: SemVer) -> bool:
        return self._key() < other._key()

    def __le__(self, other: SemVer) -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: SemVer) -> bool:
        return self._key() > other._key()

    def __ge__(self, other: SemVer) -> bool:
        return self._key() >= other._key()


def parse_semver(text: object) -> SemVer | None:
    """Parse `1.2.3`, `1.2`, `v2`, `1.0.0-rc.1+build`; None when it is not a version."""
    if not isinstance(text, str) or len(text) > 256:
        return None
    match = _SEMVER.match(text.strip())
    if not match:
        return None
    pre = match.group("pre")
    prerelease: tuple[int | str, ...] = ()
    if pre:
        prerelease = tuple(int(p) if p.isdigit() and len(p) <= 18 else p for p in pre.split("."))
    return SemVer(
        major=int(match.group("major")),
        minor=int(match.group("minor") or 0),
        patch=int(match.group("patch") or 0),
        prerelease=prerelease,
    )
