"""How the Redis store writes values: a message is one MessagePack blob (msgspec, written
once at enqueue, never re-encoded); a job's meta record is the MessagePack array the Lua
scripts keep (scripts.py's header lists its fields); attempts are MessagePack maps appended
one after another, so that recording an attempt is a string append in Lua, not a decode and
re-encode of the whole log.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import msgspec

from ...message import Attempt, DeadReason, Message, State

#: a job's number (from the `{prefix}:seq` counter) as a set member and hash field: fixed
#: width, so that the lexical order Redis uses to break ties of equal scores is the
#: numeric order (the order of enqueue)
MEMBER_DIGITS: Final = 12
#: Job.key packs the job's number with its claim count, so that a completion or release of
#: an older claim (released, or reclaimed by another process) is recognised as stale
CLAIM_BITS: Final = 20

_message = msgspec.msgpack.Decoder(Message)
_attempts = msgspec.msgpack.Decoder(list[Attempt])
_generations = msgspec.msgpack.Decoder(list[list[Attempt]])
_meta = msgspec.msgpack.Decoder(list[Any])
encode = msgspec.msgpack.encode

# States of the meta record (the Lua scripts use the same numbers).
READY, CLAIMED, DELIVERED, DEAD, SCHEDULED = 0, 1, 2, 3, 4
_STATE = {
    READY: State.QUEUED,
    SCHEDULED: State.QUEUED,
    CLAIMED: State.CLAIMED,
    DELIVERED: State.DELIVERED,
    DEAD: State.DEAD,
}


_MEMBER: Final = f"%0{MEMBER_DIGITS}x"  # %-format: the fastest, and enqueue names every job


def member(number: int) -> str:
    return _MEMBER % number


def members(numbers: Iterable[int]) -> list[str]:
    """member() of each number, in one pass."""
    return [_MEMBER % n for n in numbers]


def number_of(member: bytes | str) -> int:
    return int(member, 16)


def job_key(number: int, claims: int) -> int:
    return number << CLAIM_BITS | claims & ((1 << CLAIM_BITS) - 1)


def split_key(key: int) -> tuple[str, int]:
    """(member, claim count) of a Job.key."""
    return member(key >> CLAIM_BITS), key & ((1 << CLAIM_BITS) - 1)


def message(blob: bytes) -> Message:
    return _message.decode(blob)


def claimed(raw: bytes) -> tuple[int, float, int]:
    """(attempts, available_at, claims) of a meta record: what a claimed Job needs, without
    building a Meta (a claim reads one per job)."""
    m = _meta.decode(raw)
    return m[1], float(m[2]), m[5]


class Meta:
    """A job's meta record, decoded (see scripts.py for the fields)."""

    __slots__ = (
        "attempts",
        "available_at",
        "claims",
        "error",
        "finished_at",
        "generations",
        "reason",
        "state",
    )

    def __init__(self, raw: bytes) -> None:
        m = _meta.decode(raw)
        self.state: int = m[0]
        self.attempts: int = m[1]
        # cmsgpack packs a double with no fraction as an integer
        self.available_at = float(m[2])
        self.claims: int = m[5]
        self.finished_at = None if m[6] is False else float(m[6])
        self.reason = None if m[7] is False else DeadReason(m[7])
        self.error: str | None = None if m[8] is False else m[8]
        self.generations: int = m[10]

    @property
    def public_state(self) -> State:
        return _STATE[self.state]


def _array(n: int) -> bytes:
    """The MessagePack header of an array of n items."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def attempts(log: bytes, n: int) -> list[Attempt]:
    """The `n` attempts appended to `log`, as a list."""
    return _attempts.decode(_array(n) + log) if n else []


def history(raw: bytes, n: int) -> list[list[Attempt]]:
    return _generations.decode(_array(n) + raw) if n else []


def number(value: float) -> str:
    """A float as ARGV: repr is the shortest text that parses back to the same double."""
    return repr(float(value))
