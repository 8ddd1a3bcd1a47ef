"""Parsing of the HTTP headers the registry protocol relies on.

- `WWW-Authenticate` challenges (RFC 7235): `Bearer realm="..",service="..",scope=".."`, `Basic`.
- `Link` (RFC 8288), for the `rel="next"` page of a referrers list.
- `Retry-After` (RFC 9110): delay-seconds or an HTTP date.
- `OCI-Filters-Applied`: which filters the registry applied to a referrers list.

All functions are pure and tolerant: malformed input gives "nothing", never an exception.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BARE = re.compile(r"[^,\s\"]+")
_SPACES = " \t"


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge: `scheme` lower-case, `params` keyed by lower-case name."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a quoted-string starting at the opening quote; return (value, position after)."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if char == '"':
            return "".join(out), pos + 1
        out.append(char)
        pos += 1
    return "".join(out), pos  # unterminated: take what there is


def parse_challenges(header: str | None) -> list[Challenge]:
    """All challenges in a `WWW-Authenticate` value, in order; [] when there are none."""
    if not header:
        return []
    challenges: list[Challenge] = []
    current: Challenge | None = None
    pos = 0
    while pos < len(header):
        pos = _skip(header, pos, _SPACES + ",")
        match = _TOKEN.match(header, pos)
        if not match:
            break
        name = match.group()
        after = _skip(header, match.end(), _SPACES)
        if after < len(header) and header[after] == "=" and current is not None:
            pos = _skip(header, after + 1, _SPACES)
            if pos < len(header) and header[pos] == '"':
                value, pos = _quoted(header, pos)
            else:
                bare = _BARE.match(header, pos)  # lenient: unquoted URLs appear in the wild
                value, pos = (bare.group(), bare.end()) if bare else ("", pos)
            current.params[name.lower()] = value
        else:
            current = Challenge(scheme=name.lower())
            challenges.append(current)
            pos = match.end()
    return challenges


_LINK = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]*)*)")
_LINK_PARAM = re.compile(r";\s*([A-Za-z0-9*-]+)\s*=\s*(\"[^\"]*\"|[^;,\s]*)")


def parse_link_next(header: str | None) -> str | None:
    """The URL of the `rel="next"` link in a `Link` value (maybe relative), else None."""
    if not header:
        return None
    for match in _LINK.finditer(header):
        for name, raw in _LINK_PARAM.findall(match.group(2)):
            if name.lower() == "rel" and "next" in raw.strip('"').lower().split():
                return match.group(1).strip()
    return None


def parse_retry_after(header: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value; None when absent or unreadable."""
    if not header:
        return None
    value = header.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def filters_applied(header: str | None) -> frozenset[str]:
    """The filter names listed in `OCI-Filters-Applied`, lower-case."""
    if not header:
        return frozenset()
    return frozenset(p.strip().lower() for p in header.split(",") if p.strip())
