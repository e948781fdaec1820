"""The Store interface: where messages live between ingest and delivery.

Every backend keeps the same semantics, checked by one contract suite
(tests/test_store_contract.py):

- `enqueue` is durable when it returns: a 2xx to the producer is sent only after it. It is
  all-or-nothing (a batch request); `enqueue_each` commits single messages of independent
  producers together, answering each item as if it came alone.
- A job is QUEUED (ready, or scheduled when `available_at` is in the future), CLAIMED by a
  pool, DELIVERED (kept `retention` seconds for status look-ups) or DEAD (in the DLQ).
- `claim` takes ready jobs of one pool, highest priority first, then oldest, marking them
  CLAIMED; `complete` applies a batch of outcomes; `release` puts claimed jobs back untouched.
- On `open`, jobs left CLAIMED by a process that died are QUEUED again (at-least-once).
- Replay moves DEAD jobs back to QUEUED with a fresh attempt count; the attempts of the
  earlier generation move to the job's history (lineage is kept).

Methods are coroutines and never block the event loop (SQLite work runs on its own thread).
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Mapping, Sequence
from typing import Protocol

from ..errors import IdConflict
from ..message import (
    AuditEntry,
    Completion,
    DlqEntry,
    DlqFilter,
    Job,
    MessageStatus,
    NewMessage,
    PoolCounts,
)


class Claim:
    """The result of `Store.claim`: jobs, and when the next scheduled job of the pool
    becomes ready (None if none is scheduled), so the pool can sleep until then."""

    __slots__ = ("jobs", "next_at")

    def __init__(self, jobs: list[Job], next_at: float | None) -> None:
        self.jobs = jobs
        self.next_at = next_at


def require_pools(batch: Sequence[NewMessage]) -> None:
    """The enqueue precondition every backend checks: each message goes somewhere."""
    for new in batch:
        if not new.pools:
            raise ValueError(f"message {new.message.id!r} has no pool to go to")


def contains_ci(haystack: str | None, needle: str | None) -> bool:
    """The DLQ `error` filter, the same in every store: a case-insensitive substring by
    Unicode case folding (SQLite registers this very function: its lower() folds ASCII only)."""
    return haystack is not None and needle is not None and needle.casefold() in haystack.casefold()


def format_dlq_cursor(failed_at: float, key: int) -> str:
    """The DLQ cursor every store hands out: `<failed_at>:<key>` of the last entry of the
    page (repr, so the time comes back exact). Opaque to callers."""
    return f"{failed_at!r}:{key}"


def parse_dlq_cursor(cursor: str) -> tuple[float, int]:
    """(failed_at, key) from a cursor of `format_dlq_cursor`; ValueError for anything else
    (the API answers that with a 400, so a forged cursor never reaches a store's query)."""
    if _DLQ_CURSOR.fullmatch(cursor):
        at, key = cursor.rsplit(":", 1)
        failed_at = float(at)
        if math.isfinite(failed_at):
            return failed_at, int(key)
    raise ValueError(f"invalid cursor: {cursor!r}")


#: a repr'd float, then a job key that fits SQLite's 64-bit integers
_DLQ_CURSOR = re.compile(r"[0-9.eE+-]{1,32}:[0-9]{1,18}")


class Handoff(Protocol):
    """Where a store that can puts a pool's new jobs as it commits them, already claimed
    (the pool's window), instead of writing them ready and reading them back with a claim.
    See Store.hand_off."""

    def offer(self, most: int) -> int:
        """How many of `most` new jobs it would take now; that room stays promised until
        `receive`."""
        ...

    def receive(self, jobs: list[Job], offered: int) -> None:
        """The jobs of an `offer` that were committed claimed (at most `offered`; none
        when the enqueue failed, or the store kept them ready to keep the claim order).
        Called once for every offer, on the event loop."""
        ...


class SessionStore(Protocol):
    """Console sessions kept where every process sharing a store can read them."""

    async def load_session(self, session_id: str) -> bytes | None: ...
    async def save_session(self, session_id: str, data: bytes, ttl: float) -> None: ...
    async def drop_session(self, session_id: str) -> None: ...


class Store(abc.ABC):
    #: the `store` label of dispatcher_build_info ("sqlite", "memory", "redis")
    kind: str = "abstract"

    # --- lifecycle -----------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> int:
        """Create or migrate storage and requeue jobs left CLAIMED by a dead process.
        Returns how many jobs were requeued (0 where claims never reach storage)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending writes and release resources. Idempotent."""

    async def ping(self) -> bool:
        """True when the store can serve requests (for /readyz)."""
        return True

    @property
    def shared(self) -> bool:
        """True when several processes share this store: pool overrides saved by one are
        followed by all (dispatcher/following.py), and rates are enforced across all."""
        return False

    @property
    def sessions(self) -> SessionStore | None:
        """Where a shared store keeps console sessions; None: each process keeps its own."""
        return None

    def share_rate(self, pool: str, rate: float | None, burst: int) -> None:
        """A pool's rate and burst in force. A shared store enforces them for the sum of
        every process's claims; the others ignore this (each pool paces itself)."""
        return

    @property
    def durable(self) -> bool:
        """True when a 2xx means on disk: every acknowledged write fsynced before its reply
        (the gauge dispatcher_store_durable)."""
        return False

    @property
    def data_dir(self) -> str | None:
        """The local directory the store writes to, whose free space gates ingest
        (`store.min_free_bytes`); None for a store that keeps nothing on this machine."""
        return None

    def hand_off(self, pool: str, to: Handoff) -> None:
        """Let `enqueue` hand `pool`'s new ready jobs straight to `to`, claimed, when the
        pool has nothing else queued (so the claim order holds: these are then the first in
        line). This default never does: the pool claims everything it gets."""
        return

    # --- the hot path --------------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(self, batch: Sequence[NewMessage]) -> list[bool]:
        """Commit messages durably, one job per pool each (every message has at least one
        pool; ValueError otherwise, and nothing is stored). Answers, in order, True for a
        message stored now and False for one whose id the store already holds (a duplicate:
        nothing is written for it). Duplicates within `batch` itself: the first wins.

        A message with a `digest` (a producer-given id) is remembered until `dedup_until`,
        even after it is delivered and expired; the same id with another digest in that
        window raises IdConflict (with the item's index) and nothing of `batch` is stored."""

    async def enqueue_each(self, batch: Sequence[NewMessage]) -> list[bool | IdConflict]:
        """`enqueue` for messages of independent producers (single messages committed
        together): each item is answered as if enqueued alone, in batch order. An item
        whose id conflicts (as `enqueue` defines it: a remembered id, or an earlier item of
        `batch` that did not conflict, with another digest) is answered with its IdConflict
        (`index`: its place in `batch`) and nothing of it is stored; every other item is
        committed and answered True or False as by `enqueue`. Conflicts never refuse the
        other items.

        This default tries `enqueue(batch)` and, only if that raises IdConflict, enqueues
        the items one by one: right for any backend, a round trip per item when a batch
        holds a conflict. A backend overrides it to settle every item in one commit."""
        try:
            return list(await self.enqueue(batch))
        except IdConflict:
            pass
        answers: list[bool | IdConflict] = []
        for index, new in enumerate(batch):
            try:
                answers += await self.enqueue([new])
            except IdConflict as exc:
                exc.index = index
                answers.append(exc)
        return answers

    @abc.abstractmethod
    async def claim(self, pool: str, limit: int, now: float) -> Claim:
        """Claim up to `limit` jobs of `pool` whose available_at <= now."""

    @abc.abstractmethod
    async def complete(self, completions: Sequence[Completion]) -> None:
        """Record each attempt and apply its fate: delivered, rescheduled or dead."""

    @abc.abstractmethod
    async def release(self, jobs: Sequence[Job]) -> None:
        """Return claimed jobs to QUEUED without counting an attempt (pause, shutdown)."""

    # --- reads ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_message(self, message_id: str) -> MessageStatus | None: ...

    @abc.abstractmethod
    async def counts(self, now: float) -> dict[str, PoolCounts]:
        """Per-pool counts of every pool that has jobs; pools absent have none."""

    # --- dead-letter queue ---------------------------------------------------------------
    @abc.abstractmethod
    async def dlq_list(
        self, selector: DlqFilter, limit: int, cursor: str | None = None
    ) -> tuple[list[DlqEntry], str | None]:
        """DLQ entries matching `selector`, newest failure first, and the cursor of the next
        page (None at the end). Cursors are opaque strings."""

    @abc.abstractmethod
    async def dlq_count(self, selector: DlqFilter) -> int: ...

    @abc.abstractmethod
    async def dlq_replay(
        self, selector: DlqFilter, now: float, interval: float = 0.0
    ) -> dict[str, int]:
        """Move matching DEAD jobs back to QUEUED with a fresh attempt count. With
        `interval` > 0 the k-th one becomes available at now + k * interval (a replay rate).
        Returns how many were replayed per pool."""

    @abc.abstractmethod
    async def dlq_purge(self, selector: DlqFilter) -> dict[str, int]:
        """Delete matching DEAD jobs (and messages left with no job). Per-pool counts."""

    # --- housekeeping, settings, audit ---------------------------------------------------
    @abc.abstractmethod
    async def expire(self, delivered_before: float, ids_before: float | None = None) -> int:
        """Forget delivered jobs finished before `delivered_before`; returns how many. Also
        forget remembered ids (NewMessage.digest) whose dedup window ended before
        `ids_before` (the current time; `delivered_before` when not given)."""

    @abc.abstractmethod
    async def load_pool_settings(self) -> dict[str, dict[str, object]]:
        """Runtime overrides of pool settings (rate, burst, concurrency, paused) by pool."""

    @abc.abstractmethod
    async def save_pool_settings(self, pool: str, settings: Mapping[str, object]) -> None:
        """Persist the full override set of one pool (replacing the previous one)."""

    @abc.abstractmethod
    async def audit(self, entry: AuditEntry) -> None: ...

    @abc.abstractmethod
    async def audit_list(
        self, limit: int, cursor: str | None = None
    ) -> tuple[list[AuditEntry], str | None]:
        """Newest first."""
