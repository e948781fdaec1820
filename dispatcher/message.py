"""Values that travel through the dispatcher: messages, jobs, attempts and their states; what
a producer publishes (`Publish`), what ingest answers (`Accepted`), and what a pool's
settings and live stats read (`PoolInfo`).

A *message* is what a producer sent. Routing fans it out to one *job* per pool; each job is
delivered, retried and dead-lettered on its own. All times are epoch seconds (float).
These are msgspec Structs: cheap to allocate on the hot path and encodable without copies.
"""

from __future__ import annotations

import enum
import os
import time
from typing import Any, Literal

import msgspec


class State(enum.IntEnum):
    """Where a job is. The integer values are stored (SQLite), so never renumber them."""

    QUEUED = 0  # waiting; `available_at` in the future means scheduled
    CLAIMED = 1  # taken by a pool, in its window or being attempted
    DELIVERED = 2
    DEAD = 3


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"


class DeadReason(enum.StrEnum):
    MAX_ATTEMPTS = "max_attempts"
    PERMANENT = "permanent"


class Message(msgspec.Struct, frozen=True, gc=False):
    """An accepted message. `payload` holds the producer's bytes, never re-encoded."""

    id: str
    tag: str
    payload: bytes
    created_at: float
    priority: int = 0
    available_at: float = 0.0  # created_at + delay
    headers: dict[str, str] = {}
    trace: str | None = None  # W3C traceparent of the creation context


class Job(msgspec.Struct, gc=False):
    """One message's delivery to one pool, as claimed by that pool."""

    key: int  # the store's handle for this job; opaque outside the store
    pool: str
    message: Message
    attempts: int  # attempts already made in this generation (0 on first delivery)
    enqueued_at: float  # when it became ready for this pool (for queue-wait metrics)


class Attempt(msgspec.Struct, frozen=True, gc=False):
    n: int
    started_at: float
    duration: float
    outcome: Outcome
    error: str | None = None


class Completion(msgspec.Struct, frozen=True, gc=False):
    """What happened to a claimed job: the store applies a batch of these in one go.

    Exactly one of three fates: delivered (`retry_at` None, `dead` None), rescheduled
    (`retry_at` set) or dead-lettered (`dead` set).
    """

    job: Job
    attempt: Attempt
    retry_at: float | None = None
    dead: DeadReason | None = None


class NewMessage(msgspec.Struct, frozen=True, gc=False):
    """A validated, routed message ready to be committed: one job per pool.

    A producer-given id carries `digest` (of tag and payload): the store remembers it until
    `dedup_until`, so a repeat is a duplicate and the same id with another digest a conflict.
    """

    message: Message
    pools: tuple[str, ...]
    digest: bytes | None = None
    dedup_until: float = 0.0


class JobStatus(msgspec.Struct, frozen=True):
    """One pool's view of a message, as `GET /v1/messages/{id}` shows it."""

    pool: str
    state: State
    available_at: float
    attempts: list[Attempt]
    history: list[list[Attempt]]  # attempts of earlier generations (before each replay)
    finished_at: float | None = None
    dead_reason: DeadReason | None = None


class MessageStatus(msgspec.Struct, frozen=True):
    message: Message
    jobs: list[JobStatus]


class DlqEntry(msgspec.Struct, frozen=True):
    message: Message
    pool: str
    attempts: int
    error: str | None
    failed_at: float
    reason: DeadReason


class PoolCounts(msgspec.Struct):
    """Store-side counts for one pool; `oldest_at` is the creation time of the oldest
    undelivered message (None if none)."""

    ready: int = 0
    scheduled: int = 0
    claimed: int = 0
    dead: int = 0
    oldest_at: float | None = None


class DlqFilter(msgspec.Struct, frozen=True):
    """Selects DLQ entries: `ids` (message ids) or any mix of the other fields (AND)."""

    ids: tuple[str, ...] | None = None
    pool: str | None = None
    tag: str | None = None
    error: str | None = None  # substring of the last error, case-insensitive
    since: float | None = None  # failed at or after


class AuditEntry(msgspec.Struct, frozen=True):
    at: float
    actor: str
    action: str
    target: str
    detail: dict[str, object] = {}
    count: int | None = None


class IdGenerator:
    """Message ids that sort by creation time: 12 hex digits of milliseconds, 8 of
    process-random, 6 of a counter. Unique across processes and restarts without a round trip,
    and about a tenth of the cost of uuid4(). Used from one event loop only."""

    __slots__ = ("_counter", "_node")

    def __init__(self) -> None:
        self._node = os.urandom(4).hex()
        self._counter = int.from_bytes(os.urandom(2), "big")

    def __call__(self) -> str:
        return self.many(1)[0]

    def many(self, n: int) -> list[str]:
        """`n` ids sharing one clock reading: a batch costs one time call, not n, and the
        counter's digits come from a table a slice at a time (no formatting per id)."""
        prefix = f"{time.time_ns() // 1_000_000:012x}{self._node}"
        counter = self._counter & 0xFFFFFF
        self._counter = counter + n
        ids: list[str] = []
        while n > 0:
            high, low = divmod(counter, 4096)
            take = min(n, 4096 - low)
            ids += map((prefix + _HEX3[high]).__add__, _HEX3[low : low + take])
            counter = (counter + take) & 0xFFFFFF
            n -= take
        return ids


#: the 4096 three-digit hex numbers, in order
_HEX3: list[str] = [f"{i:03x}" for i in range(4096)]


class Publish(msgspec.Struct, frozen=True, gc=False):
    """A message as a producer gives it, already validated by the edge."""

    tag: str
    payload: bytes
    id: str | None = None
    priority: int = 0
    delay: float = 0.0
    headers: dict[str, str] = {}
    trace: str | None = None


class Accepted(msgspec.Struct, frozen=True, gc=False):
    id: str
    tag: str
    pools: tuple[str, ...]
    duplicate: bool


class PoolInfo(msgspec.Struct, frozen=True):
    """Settings and live stats of one pool, as `GET /v1/pools/{name}` shows them."""

    name: str
    paused: bool
    rate: float | None
    burst: int
    concurrency: int
    backlog: int
    in_flight: int
    scheduled: int
    dlq: int
    oldest_age_seconds: float
    max_backlog: int
    timeout: float
    sink: str
    overrides: dict[str, Any] = {}
    # Receiver protection. The circuit breaker: its state, whether it opens by itself
    # (`circuit.enabled`), why it is in its state, and while open, the seconds until probes
    # (null when opened by hand, which lasts until closed by hand).
    circuit: Literal["closed", "half_open", "open"] = "closed"
    circuit_enabled: bool = False
    circuit_reason: str = ""
    half_open_in_seconds: float | None = None
    hold_seconds: float = 0.0  # left of the hold a receiver's Retry-After asked for
    effective_concurrency: int = 0  # the limit in force: concurrency, or less while adaptive
    adaptive_enabled: bool = False
