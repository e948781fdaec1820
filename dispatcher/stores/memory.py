"""In-memory store: the reference semantics of `Store`, for tests and `memory://`.

A real backend, not a mock: the contract suite runs against it and SQLite alike. Nothing
survives the process; "durable" is trivially true. Layout:

    _messages  message id -> its jobs by pool (never empty; each job holds the Message)
    _jobs      job key -> _Job
    _ready     pool -> _ReadyQueue of (-priority, available_at, key): jobs due when written
    _sched     pool -> heap of (available_at, key): jobs written with a future
               available_at (delays, retries, paced replays); `claim` moves the due ones
               to `_ready` first, exactly as the SQLite store moves state 4 to state 0
    _dead ...  DEAD and DELIVERED jobs stay in `_jobs`; the DLQ, `expire` and `counts`
               scan it (fine for tests; SQLite uses indexes)
    _dedup     message id -> (digest, until): producer-given ids remembered for the dedup
               window (NewMessage.digest); dropped by `expire` once past
    _settings, _audit   JSON-encoded, so callers get fresh copies with the same types SQLite
               returns

Values handed out are copies (a Message with its own headers dict), so callers cannot
change what the store holds. `close()` then `open()` on the same object simulates a
restart: jobs left CLAIMED are queued again.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, cast

import msgspec

from ..errors import IdConflict, StoreError
from ..message import (
    Attempt,
    AuditEntry,
    Completion,
    DeadReason,
    DlqEntry,
    DlqFilter,
    Job,
    JobStatus,
    Message,
    MessageStatus,
    NewMessage,
    PoolCounts,
    State,
)
from .base import (
    Claim,
    Store,
    contains_ci,
    format_dlq_cursor,
    parse_dlq_cursor,
    require_pools,
)

# Internal states: State values plus SCHEDULED, which is State.QUEUED outside the store.
_READY = int(State.QUEUED)
_CLAIMED = int(State.CLAIMED)
_DELIVERED = int(State.DELIVERED)
_DEAD = int(State.DEAD)
_SCHEDULED = 4
_UNDONE = (_READY, _SCHEDULED, _CLAIMED)


def _copy(m: Message) -> Message:
    # Message is frozen; only its headers dict could be changed behind the store's back.
    return msgspec.structs.replace(m, headers=dict(m.headers)) if m.headers else m


class _Job(msgspec.Struct, gc=False):
    """A job as the store holds it. gc=False and no lists until there is something to put
    in them: a million queued jobs then add nothing for the garbage collector to walk,
    which otherwise cost more than the rest of enqueue."""

    key: int
    msg: Message
    pool: str
    state: int
    available_at: float
    attempts: int = 0
    log: list[Attempt] | None = None
    history: list[list[Attempt]] | None = None
    finished_at: float | None = None
    dead_reason: DeadReason | None = None
    last_error: str | None = None


class _ReadyQueue:
    """A priority queue for entries that mostly arrive in order, as ready jobs do (same
    priority, rising time and key). An entry not below the last one appended joins `fifo`
    (sorted, O(1)); any other (a higher priority, a release, a promoted retry) joins `heap`.
    The smallest entry is the smaller of the two heads: FIFO traffic never pays a heap's
    log n tuple comparisons, which were most of what a claim cost."""

    __slots__ = ("fifo", "heap")

    def __init__(self) -> None:
        self.fifo: deque[tuple[int, float, int]] = deque()
        self.heap: list[tuple[int, float, int]] = []

    def __len__(self) -> int:
        return len(self.fifo) + len(self.heap)

    def push(self, entry: tuple[int, float, int]) -> None:
        fifo = self.fifo
        if not fifo or entry >= fifo[-1]:
            fifo.append(entry)
        else:
            heapq.heappush(self.heap, entry)

    def pop(self) -> tuple[int, float, int] | None:
        """The smallest entry, or None when empty."""
        fifo, heap = self.fifo, self.heap
        if heap and (not fifo or heap[0] < fifo[0]):
            return heapq.heappop(heap)
        return fifo.popleft() if fifo else None


class MemoryStore(Store):
    kind = "memory"

    def __init__(self) -> None:
        self._open = False
        # No (Message, jobs) tuples: a tuple is tracked by the garbage collector, a dict of
        # gc-free jobs is not.
        self._messages: dict[str, dict[str, _Job]] = {}
        self._jobs: dict[int, _Job] = {}
        self._ready: dict[str, _ReadyQueue] = {}
        self._sched: dict[str, list[tuple[float, int]]] = {}
        self._next_key = 0
        self._settings: dict[str, bytes] = {}
        self._audit: list[bytes] = []
        self._dedup: dict[str, tuple[bytes, float]] = {}

    # --- lifecycle -----------------------------------------------------------------------
    async def open(self) -> int:
        self._open = True
        requeued = 0
        for job in self._jobs.values():
            if job.state == _CLAIMED:
                self._push_ready(job)
                requeued += 1
        return requeued

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> bool:
        return self._open

    def _check(self) -> None:
        if not self._open:
            raise StoreError("the memory store is not open")

    def _push_ready(self, job: _Job) -> None:
        job.state = _READY
        queue = self._ready.get(job.pool)
        if queue is None:
            queue = self._ready[job.pool] = _ReadyQueue()
        queue.push((-job.msg.priority, job.available_at, job.key))

    def _push_scheduled(self, job: _Job) -> None:
        job.state = _SCHEDULED
        heapq.heappush(self._sched.setdefault(job.pool, []), (job.available_at, job.key))

    # --- the hot path --------------------------------------------------------------------
    async def enqueue(self, batch: Sequence[NewMessage]) -> list[bool]:
        # Without `each`, _known_ids raises IdConflict rather than answer one.
        return cast(list[bool], self._enqueue(batch, each=False))

    async def enqueue_each(self, batch: Sequence[NewMessage]) -> list[bool | IdConflict]:
        return self._enqueue(batch, each=True)

    def _enqueue(self, batch: Sequence[NewMessage], each: bool) -> list[bool | IdConflict]:
        self._check()
        require_pools(batch)
        conflicts: dict[int, IdConflict] = {}
        known = self._known_ids(batch, conflicts if each else None)
        messages, all_jobs = self._messages, self._jobs
        out: list[bool | IdConflict] = []
        for index, new in enumerate(batch):
            m = new.message
            conflict = conflicts.get(index)
            if conflict is not None:
                out.append(conflict)
                continue
            if m.id in messages or m.id in known:
                out.append(False)
                continue
            out.append(True)
            if new.digest is not None:
                self._dedup[m.id] = (new.digest, new.dedup_until)
                known.add(m.id)
            if m.headers:
                m = _copy(m)
            jobs: dict[str, _Job] = {}
            messages[m.id] = jobs
            scheduled = m.available_at > m.created_at
            available_at = m.available_at if scheduled else m.created_at
            for pool in new.pools if len(new.pools) == 1 else dict.fromkeys(new.pools):
                self._next_key += 1
                key = self._next_key
                job = jobs[pool] = all_jobs[key] = _Job(key, m, pool, _READY, available_at)
                if scheduled:
                    self._push_scheduled(job)
                else:
                    self._push_ready(job)
        return out

    def _known_ids(
        self, batch: Sequence[NewMessage], conflicts: dict[int, IdConflict] | None
    ) -> set[str]:
        """Ids remembered within their dedup window. One that comes back (or repeats
        within `batch`) with another digest raises IdConflict, or with `conflicts` is put
        there by its index. Nothing is written before this."""
        known: set[str] = set()
        first: dict[str, bytes] = {}
        for index, new in enumerate(batch):
            if new.digest is None:
                continue
            m = new.message
            held = self._dedup.get(m.id)
            if held is not None and held[1] > m.created_at:
                known.add(m.id)
                if held[0] != new.digest:
                    self._conflict(m.id, index, conflicts)
                    continue
            # A conflicting item never becomes the `first` of its id: what it conflicts with is.
            if first.setdefault(m.id, new.digest) != new.digest:
                self._conflict(m.id, index, conflicts)
        return known

    @staticmethod
    def _conflict(message_id: str, index: int, conflicts: dict[int, IdConflict] | None) -> None:
        if conflicts is None:
            raise IdConflict(message_id, index)
        conflicts[index] = IdConflict(message_id, index)

    async def claim(self, pool: str, limit: int, now: float) -> Claim:
        self._check()
        sched = self._sched.get(pool, [])
        while sched and sched[0][0] <= now:
            job = self._jobs.get(heapq.heappop(sched)[1])
            if job is not None and job.state == _SCHEDULED:
                self._push_ready(job)
        ready = self._ready.get(pool) or _ReadyQueue()
        jobs: list[Job] = []
        skipped: list[tuple[int, float, int]] = []
        pop, get = ready.pop, self._jobs.get
        while len(jobs) < limit:
            entry = pop()
            if entry is None:
                break
            job = get(entry[2])
            if job is None or job.state != _READY:
                continue
            if job.available_at > now:  # only when `now` lags the producer's clock
                skipped.append(entry)
                continue
            job.state = _CLAIMED
            m = job.msg
            jobs.append(
                Job(job.key, pool, _copy(m) if m.headers else m, job.attempts, job.available_at)
            )
        for entry in skipped:
            ready.push(entry)
        return Claim(jobs, sched[0][0] if sched else None)

    async def complete(self, completions: Sequence[Completion]) -> None:
        self._check()
        for c in completions:
            job = self._jobs.get(c.job.key)
            if job is None or job.state != _CLAIMED:
                continue
            a = c.attempt
            if job.log is None:
                job.log = [a]
            else:
                job.log.append(a)
            job.attempts += 1
            if c.dead is not None:
                job.state = _DEAD
                job.finished_at = a.started_at + a.duration
                job.dead_reason = c.dead
                job.last_error = a.error
            elif c.retry_at is not None:
                job.available_at = c.retry_at
                job.last_error = a.error
                self._push_scheduled(job)
            else:
                job.state = _DELIVERED
                job.finished_at = a.started_at + a.duration

    async def release(self, jobs: Sequence[Job]) -> None:
        self._check()
        for j in jobs:
            job = self._jobs.get(j.key)
            if job is not None and job.state == _CLAIMED:
                self._push_ready(job)

    # --- reads ---------------------------------------------------------------------------
    async def get_message(self, message_id: str) -> MessageStatus | None:
        self._check()
        jobs = self._messages.get(message_id)
        if jobs is None:
            return None
        msg = next(iter(jobs.values())).msg
        statuses = [
            JobStatus(
                pool=j.pool,
                state=State(_READY if j.state == _SCHEDULED else j.state),
                available_at=j.available_at,
                attempts=list(j.log or ()),
                history=[list(g) for g in j.history or ()],
                finished_at=j.finished_at,
                dead_reason=j.dead_reason,
            )
            for j in sorted(jobs.values(), key=lambda j: j.key)
        ]
        return MessageStatus(message=_copy(msg), jobs=statuses)

    async def counts(self, now: float) -> dict[str, PoolCounts]:
        self._check()
        out: dict[str, PoolCounts] = {}
        for job in self._jobs.values():
            s = job.state
            if s == _DELIVERED:
                continue
            pc = out.get(job.pool)
            if pc is None:
                pc = out[job.pool] = PoolCounts()
            if s == _READY:
                pc.ready += 1
            elif s == _SCHEDULED:
                if job.available_at > now:
                    pc.scheduled += 1
                else:
                    pc.ready += 1
            elif s == _CLAIMED:
                pc.claimed += 1
            else:
                pc.dead += 1
            if s in _UNDONE and (pc.oldest_at is None or job.msg.created_at < pc.oldest_at):
                pc.oldest_at = job.msg.created_at
        return out

    # --- dead-letter queue ---------------------------------------------------------------
    def _dead(self, sel: DlqFilter) -> list[_Job]:
        """Matching DEAD jobs, newest failure first."""
        ids = set(sel.ids) if sel.ids is not None else None
        found = [
            j
            for j in self._jobs.values()
            if j.state == _DEAD
            and (ids is None or j.msg.id in ids)
            and (sel.pool is None or j.pool == sel.pool)
            and (sel.tag is None or j.msg.tag == sel.tag)
            and (sel.error is None or contains_ci(j.last_error, sel.error))
            and (sel.since is None or _finished(j) >= sel.since)
        ]
        found.sort(key=lambda j: (_finished(j), j.key), reverse=True)
        return found

    async def dlq_list(
        self, selector: DlqFilter, limit: int, cursor: str | None = None
    ) -> tuple[list[DlqEntry], str | None]:
        self._check()
        found = self._dead(selector)
        if cursor is not None:
            after = parse_dlq_cursor(cursor)
            found = [j for j in found if (_finished(j), j.key) < after]
        page = found[: max(limit, 0)]
        entries = [
            DlqEntry(
                message=_copy(j.msg),
                pool=j.pool,
                attempts=j.attempts,
                error=j.last_error,
                failed_at=_finished(j),
                reason=j.dead_reason or DeadReason.MAX_ATTEMPTS,
            )
            for j in page
        ]
        more = len(found) > len(page) and page
        return entries, (format_dlq_cursor(_finished(page[-1]), page[-1].key) if more else None)

    async def dlq_count(self, selector: DlqFilter) -> int:
        self._check()
        return len(self._dead(selector))

    async def dlq_replay(
        self, selector: DlqFilter, now: float, interval: float = 0.0
    ) -> dict[str, int]:
        self._check()
        out: dict[str, int] = {}
        for k, job in enumerate(reversed(self._dead(selector))):  # oldest failure first
            if job.history is None:
                job.history = []
            job.history.append(job.log or [])
            job.log = None
            job.attempts = 0
            job.finished_at = job.dead_reason = job.last_error = None
            job.available_at = now + k * interval
            if k * interval == 0:
                self._push_ready(job)
            else:
                self._push_scheduled(job)
            out[job.pool] = out.get(job.pool, 0) + 1
        return out

    async def dlq_purge(self, selector: DlqFilter) -> dict[str, int]:
        self._check()
        out: dict[str, int] = {}
        for job in self._dead(selector):
            self._drop(job)
            out[job.pool] = out.get(job.pool, 0) + 1
        return out

    def _drop(self, job: _Job) -> None:
        del self._jobs[job.key]
        jobs = self._messages[job.msg.id]
        del jobs[job.pool]
        if not jobs:
            del self._messages[job.msg.id]

    # --- housekeeping, settings, audit ---------------------------------------------------
    async def expire(self, delivered_before: float, ids_before: float | None = None) -> int:
        self._check()
        old = [
            j
            for j in self._jobs.values()
            if j.state == _DELIVERED and _finished(j) < delivered_before
        ]
        for job in old:
            self._drop(job)
        ids_cutoff = delivered_before if ids_before is None else ids_before
        for key in [k for k, (_, until) in self._dedup.items() if until < ids_cutoff]:
            del self._dedup[key]
        return len(old)

    async def load_pool_settings(self) -> dict[str, dict[str, object]]:
        self._check()
        return {pool: _decode_obj(raw) for pool, raw in self._settings.items()}

    async def save_pool_settings(self, pool: str, settings: Mapping[str, object]) -> None:
        self._check()
        self._settings[pool] = msgspec.json.encode(dict(settings))

    async def audit(self, entry: AuditEntry) -> None:
        self._check()
        self._audit.append(msgspec.json.encode(entry))

    async def audit_list(
        self, limit: int, cursor: str | None = None
    ) -> tuple[list[AuditEntry], str | None]:
        self._check()
        end = len(self._audit) if cursor is None else int(cursor) - 1  # aid = index + 1
        start = max(end - max(limit, 0), 0)
        entries = [msgspec.json.decode(raw, type=AuditEntry) for raw in self._audit[start:end]]
        entries.reverse()
        return entries, (str(start + 1) if start > 0 and entries else None)


def _finished(job: _Job) -> float:
    return job.finished_at if job.finished_at is not None else 0.0


def _decode_obj(raw: bytes) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.json.decode(raw)
    return out
