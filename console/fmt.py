"""Formatting for people: ages, rates, times and payloads, used as template filters."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

PAYLOAD_PREVIEW = 120  # characters of payload shown in a table cell
PAYLOAD_MAX = 256 * 1024  # bytes of payload shown on a message page


def age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = max(0.0, float(seconds))
    if s < 1:
        return "0 s" if s == 0 else f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} m {int(s % 60)} s"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} m"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def rate(per_second: float | None) -> str:
    if per_second is None:
        return "unlimited"
    if per_second == 0:
        return "0/s"
    if per_second < 0.1:
        return f"{per_second * 60:.1f}/min"
    return f"{per_second:.1f}/s" if per_second < 100 else f"{per_second:,.0f}/s"


def percent(ratio: float) -> str:
    if ratio == 0:
        return "0%"
    return f"{ratio * 100:.1f}%" if ratio < 0.1 else f"{ratio * 100:.0f}%"


def when(epoch: float | None) -> str:
    """A display format, not the API's RFC 3339 (that is `dispatcher.timefmt`): UTC to the
    second, `2026-11-22 10:00:00Z`, which operators compare with logs and traces."""
    if epoch is None:
        return "—"
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + "Z"


def number(n: int | float) -> str:
    return f"{n:,}"


def payload_text(payload: bytes, limit: int = PAYLOAD_MAX) -> tuple[str, bool]:
    """The payload as text for a <pre>: JSON pretty-printed (keys in the producer's order),
    anything else decoded as UTF-8 with replacement. The bool says it was cut at `limit`.
    Always text: the template escapes it, it is never markup."""
    cut = len(payload) > limit
    if not cut:
        try:
            msgspec.json.decode(payload)
        except msgspec.DecodeError:
            pass
        else:
            return msgspec.json.format(payload, indent=2).decode("utf-8", "replace"), False
    return payload[:limit].decode("utf-8", "replace"), cut


def preview(payload: bytes) -> str:
    text = payload[: PAYLOAD_PREVIEW * 4].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= PAYLOAD_PREVIEW else text[: PAYLOAD_PREVIEW - 1] + "…"


def is_json(payload: bytes) -> bool:
    try:
        msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return False
    return True


FILTERS: dict[str, Any] = {
    "age": age,
    "duration": duration,
    "rate": rate,
    "percent": percent,
    "when": when,
    "number": number,
    "preview": preview,
}
