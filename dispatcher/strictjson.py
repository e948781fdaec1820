"""Strict JSON: what msgspec accepts, minus what a careful API refuses.

msgspec already refuses malformed JSON, NaN and Infinity, numbers that overflow a double and
lone UTF-16 surrogates in escapes. It does not refuse duplicate keys (the last one wins),
bytes that are not UTF-8 inside a value it skips (a `Raw` payload), nesting short of its own
recursion limit, or integers of thousands of digits. `check` adds those, cheaply:

- UTF-8: one C-speed decode of the whole body.
- depth: a document with at most MAX_DEPTH opening brackets cannot nest deeper; only bodies
  with more are walked, level by level, with C-level iteration.
- duplicate keys: decoding into dicts drops duplicates, and re-encoding that compactly
  keeps every ':' inside strings while losing one per dropped key. So, unless a key may be
  spelt with a `\\u003a` escape, "same number of ':' before and after" means "no duplicate";
  the exact check (json.loads with a pairs hook) runs only when that test cannot decide.
- long numbers: only a body longer than MAX_DIGITS is searched for a run of digits (every
  digit mapped to one byte with `translate`, then a plain substring search: a regex costs
  ten times more), and only a hit is looked at closely (outside strings).

Measured on a 100-byte message: about 2 µs in all; on a 1000-item batch about 1 ms.
"""

from __future__ import annotations

import json
import re
from itertools import chain, compress
from typing import Any

import msgspec

MAX_DEPTH = 64
MAX_DIGITS = 4300  # CPython's int_max_str_digits default

_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
_LONG_RUN = re.compile(rb"[0-9]{%d}" % (MAX_DIGITS + 1))
_DIGITS_AS_ZERO = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_ZERO_RUN = b"0" * (MAX_DIGITS + 1)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_CONTAINERS = frozenset({dict, list})


class JsonError(ValueError):
    """The body is not strict JSON; the text says why."""


def check(body: bytes, *, depth: bool = True) -> None:
    """Raise JsonError unless `body` is strict JSON (see the module docstring).

    `depth=False` leaves nesting to the caller: a typed decode bounds the depth of every
    field but the free-form ones, which `check_depth` then looks at one by one (for a batch
    that is far cheaper than walking the whole document)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonError(f"invalid UTF-8 at byte {exc.start}") from None
    try:
        value = _decode_any(body)
    except msgspec.DecodeError as exc:
        raise JsonError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise JsonError(f"nesting deeper than {MAX_DEPTH}") from None
    if depth and body.count(b"{") + body.count(b"[") > MAX_DEPTH:
        _walk_depth(value, MAX_DEPTH)
    if b"{" in body:
        _check_keys(body, value)
    # Digits in strings are fine: a hit is looked at again with the strings taken out.
    if (
        len(body) > MAX_DIGITS
        and _ZERO_RUN in body.translate(_DIGITS_AS_ZERO)
        and _LONG_RUN.search(_STRING.sub(b'""', body))
    ):
        raise JsonError(f"a number has more than {MAX_DIGITS} digits")


def check_depth(raw: bytes, limit: int = MAX_DEPTH) -> None:
    """Raise JsonError if the JSON value `raw` (already checked by `check`) nests deeper
    than `limit`."""
    if raw.count(b"{") + raw.count(b"[") > limit:
        _walk_depth(_decode_any(raw), limit)


def check_payload_depth(payload: bytes, depth: int) -> None:
    """Raise JsonError if `payload`, found `depth` levels down an ingest body (1: a single
    message's payload or event's data, 2: a batch item's), makes the body nest deeper than
    MAX_DEPTH. The rest of the rule `check` has already applied to the whole body."""
    check_depth(payload, MAX_DEPTH - depth)


def check_payload(payload: bytes) -> None:
    """Raise JsonError unless ingest would take `payload` as the payload of one message: for
    a payload given on its own (the console's edited replay), the API's rule exactly."""
    check(payload, depth=False)
    check_payload_depth(payload, 1)


def _walk_depth(value: Any, limit: int) -> None:
    level = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise JsonError(f"nesting deeper than {MAX_DEPTH}")
        dicts = [c for c in level if type(c) is dict]
        lists = [c for c in level if type(c) is list]
        children = list(chain(chain.from_iterable(map(dict.values, dicts)), *lists))
        level = list(compress(children, map(_CONTAINERS.__contains__, map(type, children))))


def _check_keys(body: bytes, value: Any) -> None:
    # A ':' may hide as \u003a or \u003A in a key (JSON has no \U escape: msgspec refused it).
    if b"\\u003" not in body:
        if _encode(value).count(b":") == body.count(b":"):
            return
    else:
        objects: list[list[tuple[str, Any]]] = []
        _loads(body, objects.append)
        if sum(map(len, objects)) == sum(map(len, map(dict, objects))):
            return
    raise JsonError(f"duplicate key {_first_duplicate(body)!r}")


def _first_duplicate(body: bytes) -> str:
    """The first key given twice in one object (on the error path only)."""
    found: list[str] = []

    def hook(pairs: list[tuple[str, Any]]) -> None:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen and not found:
                found.append(key)
            seen.add(key)

    _loads(body, hook)
    return found[0] if found else "?"


def _loads(body: bytes, hook: Any) -> None:
    try:
        json.loads(body, object_pairs_hook=hook)
    except ValueError:  # an integer over int_max_str_digits
        raise JsonError(f"a number has more than {MAX_DIGITS} digits") from None
