"""RFC 3339 times for the API and the logs: epoch seconds in, `2026-11-22T10:00:00.123Z`
out, and back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def rfc3339(epoch: float) -> str: ...
@overload
def rfc3339(epoch: None) -> None: ...
@overload
def rfc3339(epoch: float | None) -> str | None: ...


def rfc3339(epoch: float | None) -> str | None:
    """Epoch seconds as UTC to the millisecond, `Z` for the offset: the one
    format of times in API bodies and in log lines."""
    if epoch is None:
        return None
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def parse_rfc3339(text: str) -> float:
    """Raise ValueError unless `text` is an RFC 3339 time with an offset (or a plain number
    of epoch seconds, for scripts)."""
    try:
        return float(text)
    except ValueError:
        pass
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("a time needs an offset, e.g. 2026-11-22T10:00:00Z")
    return value.timestamp()
