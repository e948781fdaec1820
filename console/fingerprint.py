"""Error fingerprints: the DLQ grouped by what went wrong, not by which message it was.

An error text becomes its fingerprint by replacing the parts that vary between messages
(ids, numbers, addresses, quoted values) with placeholders, so "timeout after 10.0 s to
10.0.0.7:443" and "timeout after 10.0 s to 10.0.0.9:443" fall into one group. Each group
also names the longest literal run of its fingerprint: as the DLQ's `error` filter (a
case-insensitive substring) it selects the group's entries, so replay and purge of a
group are the ordinary filtered actions, with the same dry-run count first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from dispatcher.message import DlqEntry

MAX_LENGTH = 200
_VARIABLE = re.compile(
    r"""
      [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}  # uuid
    | \b[0-9a-fA-F]{16,}\b                   # long hex ids (ours are 26 digits)
    | \b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b   # IPv4 with optional port
    | "[^"]{0,80}" | '[^']{0,80}'            # quoted values
    | (?<!HTTP\ )(?<!status\ )\b\d+(?:\.\d+)?  # numbers, but not HTTP status codes
    """,
    re.VERBOSE,
)
_PLACEHOLDER = "\u2217"  # ASTERISK OPERATOR: no sink writes it, so it marks a gap


def fingerprint(error: str | None) -> str:
    if not error:
        return "(no error recorded)"
    return _VARIABLE.sub(_PLACEHOLDER, error.strip())[:MAX_LENGTH]


def filter_text(print_: str) -> str:
    """The longest literal part of a fingerprint: a substring every member's error has."""
    parts = [p.strip() for p in print_.split(_PLACEHOLDER)]
    return max(parts, key=len) if parts else ""


@dataclass
class Group:
    fingerprint: str
    count: int = 0
    example: str | None = None
    pools: set[str] = field(default_factory=set)
    last_failed_at: float = 0.0

    @property
    def filter(self) -> str:
        return filter_text(self.fingerprint)


def group_entries(entries: Iterable[DlqEntry]) -> list[Group]:
    """Groups of `entries` by fingerprint, the biggest first."""
    groups: dict[str, Group] = {}
    for entry in entries:
        key = fingerprint(entry.error)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(key, example=entry.error)
        group.count += 1
        group.pools.add(entry.pool)
        group.last_failed_at = max(group.last_failed_at, entry.failed_at)
    return sorted(groups.values(), key=lambda g: (-g.count, -g.last_failed_at))
