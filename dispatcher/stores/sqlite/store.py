"""SqliteStore: the Store interface over the parts of this package. It owns the threads
(the writer, the reader, the checkpointer), the claim books and the counters, and hands
each operation to the thread that runs it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Concatenate, Final, ParamSpec, TypeVar, cast

from ...errors import IdConflict, PartlyDone, StoreError
from ...message import (
    AuditEntry,
    Completion,
    DlqEntry,
    DlqFilter,
    Job,
    Message,
    MessageStatus,
    NewMessage,
    PoolCounts,
)
from ..base import Claim, Handoff, Store, require_pools
from . import reads, schema, writes
from .claims import ClaimBooks, Delta
from .reads import JID, MessageRows, message
from .rows import NewRows, outcome_rows, to_json
from .schema import DEAD, FANOUT_LIMIT, READY, SCHEDULED
from .writer import Writer, checkpoints

_T = TypeVar("_T")
_P = ParamSpec("_P")

_CHUNK: Final = 5000
_NONE: Final = (0, 0, 0)
#: messages kept for their claim (SqliteStore._fresh), and jobs a pool's tail holds at most
#: (SqliteStore._tails): with small messages, ~5 MB each
_FRESH_LIMIT: Final = 16384
_TAIL_LIMIT: Final = 16384
_STATUS_READS: Final = 3  # reads of a message's rows before commits in between are let be

_NEW, _OPEN, _CLOSING, _CLOSED = range(4)


class _Tail:
    """The head of one pool's queue, in memory: its ready jobs in claim order, kept as
    enqueues commit them from a moment the pool had nothing queued, so that a claim takes
    them from here, at once, rather than reading them back after the writes queued ahead
    of it (a burst of enqueues made claims wait ~40 ms each, and the workers starve).

    Open while it holds every ready job of the pool (enqueues append); closed at
    _TAIL_LIMIT jobs (what follows is in the file only: claims read it once the tail is
    empty). Stale, and dropped, once jobs became ready or scheduled other than by an
    enqueue (the pool's ready_gen moved: a release, a promotion, a replay, a retry: the
    tail then knows neither their place nor when they are due), once a job sorts apart
    from it, or once a claim of the file may have taken some."""

    __slots__ = ("gen", "jobs", "open", "priority")

    def __init__(self, gen: int) -> None:
        self.gen = gen
        self.jobs: deque[Job] = deque()
        self.open = True
        self.priority: int | None = None  # of its jobs; a job of another ends the tail


class SqliteStore(Store):
    kind = "sqlite"

    def __init__(self, path: str, *, synchronous: str = "full") -> None:
        if synchronous.lower() not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self.path = path
        self.synchronous = synchronous.upper()
        #: transactions committed by the writer thread (one per group of requests)
        self.commits = 0
        self._state = _NEW
        self._writer = Writer(self.synchronous, self._on_commit)
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed: asyncio.Future[None] | None = None
        # Mids are numbered on the loop (_enqueue). The counters are changed under _lock, by
        # the writer as it commits and by the loop as it claims from a tail; the reader
        # snapshots them.
        self._next_mid = 0
        self._counters: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._claims = ClaimBooks(self._lock)  # changed under _lock: the reader looks in
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self._handoffs: dict[str, Handoff] = {}  # pools that take new jobs as enqueued
        # Messages of ready jobs not claimed yet, by mid (writes.claim): put in on the loop
        # as a batch is built (before its enqueue is queued), taken out by the writer as it
        # claims them, or by the loop if the enqueue did not write them. Single dict
        # operations, atomic under the GIL; a message not here is read back instead.
        self._fresh: dict[int, Message] = {}
        # Owned by the loop: each pool's queue head as far as memory holds it (_Tail), and
        # the earliest time one of its scheduled jobs may be due (None: none; a pool not
        # here: unknown, so its claims ask the file, which promotes due jobs).
        self._tails: dict[str, _Tail] = {}
        self._next_at: dict[str, float | None] = {}
        # Owned by the reader thread.
        self._r: sqlite3.Connection

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def durable(self) -> bool:
        return self.synchronous == "FULL"

    @property
    def data_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.path)) or "."

    async def open(self) -> int:
        if self._state != _NEW:
            raise StoreError("a SqliteStore opens once; make a new one to reopen the file")
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[int] = loop.create_future()
        self._writer.start(self._w_connect, self._w_open, opened)
        requeued = await opened
        self._checkpointer = threading.Thread(
            target=checkpoints,
            args=(self._connect, self._stop_checkpoints),
            name="dispatcher-sqlite-checkpointer",
            daemon=True,
        )
        self._checkpointer.start()
        self._reader = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="dispatcher-sqlite-reader"
        )
        self._state = _OPEN
        try:
            await self._on_reader(self._r_open)
        except BaseException:
            await self.close()
            raise
        return requeued

    async def close(self) -> None:
        if self._state == _NEW:
            self._state = _CLOSED
        if self._state == _CLOSED:
            return
        loop = asyncio.get_running_loop()
        if self._closed is not None:  # another close() is draining
            await asyncio.shield(self._closed)
            return
        self._state = _CLOSING
        self._closed = loop.create_future()
        try:
            if not self._writer.dead:
                stopped: asyncio.Future[None] = loop.create_future()
                self._writer.stop(stopped)
                await stopped
            self._stop_checkpoints.set()
            if self._checkpointer is not None:
                await asyncio.to_thread(self._checkpointer.join)
            assert self._reader is not None
            await loop.run_in_executor(self._reader, self._r_close)
            self._reader.shutdown(wait=False)
        finally:
            self._state = _CLOSED
            self._closed.set_result(None)

    async def ping(self) -> bool:
        return self._state == _OPEN and not self._writer.dead

    # --- plumbing ------------------------------------------------------------------------
    def _check(self) -> None:
        if self._state != _OPEN:
            raise StoreError("the sqlite store is not open")
        if self._writer.dead:
            raise StoreError("the sqlite writer thread has stopped")

    async def _write(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, Delta, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        return await self._submit(lambda db, d: fn(db, d, *args, **kwargs))

    def _submit(self, fn: Callable[[sqlite3.Connection, Delta], _T]) -> asyncio.Future[_T]:
        """Queue a durable write; its future settles once it is committed (or failed)."""
        self._check()
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._writer.put(fn, future, durable=True)
        return future

    async def _write_volatile(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, Delta, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """A write whose loss in a crash is harmless, because recovery reaches the same state
        anyway (claims and releases: a crash turns every claim back into a ready job). A group
        of only such writes commits without an fsync; the next durable commit's fsync covers
        their WAL frames too, and WAL keeps every commit atomic either way."""
        self._check()
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._writer.put(lambda db, d: fn(db, d, *args, **kwargs), future, durable=False)
        return await future

    async def _read(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """`fn(the reader's connection, *args, **kwargs)`, on the reader thread."""
        return await self._on_reader(lambda: fn(self._r, *args, **kwargs))

    async def _on_reader(self, fn: Callable[[], _T]) -> _T:
        if self._state != _OPEN or self._reader is None:
            raise StoreError("the sqlite store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, fn)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        return schema.connect(self.path)

    # --- the writer thread ---------------------------------------------------------------
    def _w_connect(self) -> sqlite3.Connection:
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        return self._connect()

    def _w_open(self, db: sqlite3.Connection) -> int:
        schema.configure_writer(db, self.path, self.synchronous)
        db.execute("BEGIN IMMEDIATE")
        try:
            schema.migrate(db, self.path)
            # Only files written before claims moved into the writer's memory (claims.Claims)
            # hold claimed rows; today's claims vanish with the process, which is the same thing.
            requeued = db.execute("UPDATE jobs SET state = 0 WHERE state = 1").rowcount
            self._next_mid = db.execute("SELECT coalesce(max(mid), 0) FROM messages").fetchone()[0]
            counters: dict[str, list[int]] = {}
            slot = {READY: 0, SCHEDULED: 0, DEAD: 2}
            for pool, state, n in db.execute(
                "SELECT pool, state, count(*) FROM jobs WHERE state != 2 GROUP BY pool, state"
            ):
                counters.setdefault(pool, [0, 0, 0])[slot[state]] += n
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        with self._lock:
            self._counters = counters
        return int(requeued)

    def _w_queued(self, pool: str) -> int:
        """The pool's unclaimed queued jobs as the running request sees them: the counters,
        and what the requests before it in this group changed (writes.Queued)."""
        n = self._counters.get(pool, _NONE)[0]
        for delta in self._writer.pending:
            n += delta.get(pool, _NONE)[0]
        return n

    def _on_commit(self, deltas: Sequence[Delta]) -> None:
        with self._lock:
            self.commits += 1  # under the lock: the reader compares it (_r_get_message)
            for books in self._claims.values():
                books.leaving.clear()  # their outcomes are on disk now
            counters = self._counters
            for delta in deltas:
                for pool, (dq, dc, dd) in delta.items():
                    c = counters.get(pool)
                    if c is None:
                        c = counters[pool] = [0, 0, 0]
                    c[0] += dq
                    c[1] += dc
                    c[2] += dd

    # --- the reader thread ---------------------------------------------------------------
    def _r_open(self) -> None:
        self._r = self._connect()
        self._r.execute("PRAGMA query_only = ON")

    def _r_close(self) -> None:
        self._r.close()
        if self._writer.thread is not None:
            self._writer.thread.join()  # it has settled its last futures; only returning is left

    def _r_get_message(self, db: sqlite3.Connection, message_id: str) -> MessageStatus | None:
        # A claimed job's row reads ready: only the writer's books know it is claimed, and
        # they keep a finished job (`leaving`) until its outcome commits. Should a commit
        # land between this snapshot and the look at the books, the rows would be older
        # than the books: the commit count tells, and the rows are read again.
        for _ in range(_STATUS_READS - 1):
            with self._lock:
                commits = self.commits
            found = reads.message_rows(db, message_id)
            with self._lock:
                if self.commits == commits:
                    held = self._in_flight(found)
                    break
        else:
            # Commits kept landing. Read with the lock held: a commit may still land, but
            # the writer cannot clear `leaving` after it until the books have been seen.
            with self._lock:
                found = reads.message_rows(db, message_id)
                held = self._in_flight(found)
        return None if found is None else reads.message_status(found, held)

    def _in_flight(self, found: MessageRows | None) -> set[int]:
        """The jids among these job rows that the books call claimed (under the lock)."""
        if found is None:
            return set()
        books = self._claims
        return {
            row[JID]
            for row in found[1]
            if row[1] == READY and row[0] in books and books[row[0]].in_flight(row[JID])
        }

    def _r_counts(self, db: sqlite3.Connection, now: float) -> dict[str, PoolCounts]:
        with self._lock:
            counters = [(pool, list(c)) for pool, c in self._counters.items() if any(c)]
        return reads.counts(db, counters, now)

    # --- the Store interface -------------------------------------------------------------
    async def enqueue(self, batch: Sequence[NewMessage]) -> list[bool]:
        # Without `each`, the writer raises IdConflict rather than answer one.
        return cast(list[bool], await self._enqueue(batch, each=False))

    async def enqueue_each(self, batch: Sequence[NewMessage]) -> list[bool | IdConflict]:
        return await self._enqueue(batch, each=True)

    async def _enqueue(self, batch: Sequence[NewMessage], each: bool) -> list[bool | IdConflict]:
        self._check()
        if not batch:
            return []
        require_pools(batch)
        # Rows are built here, on the event loop, and numbered here too: the writer thread
        # (the bottleneck under load) only executes them. Mids follow the order of calls,
        # which is the order of the writer's queue; a duplicate leaves a gap, which is fine.
        offered: dict[str, int] = {}
        handoffs = self._handoffs

        def room(pool: str) -> int:
            to = handoffs.get(pool)
            n = offered[pool] = to.offer(len(batch)) if to is not None else 0
            return n

        first_mid = self._next_mid + 1
        try:
            rows = NewRows(
                batch, self._next_mid, room if handoffs else None, self._fresh, _FRESH_LIMIT
            )
            self._next_mid += len(batch)
            future = self._submit(
                lambda db, d: writes.enqueue(db, d, self._claims, rows, self._w_queued, each)
            )
        except BaseException:
            self._settle_enqueue(None, batch, first_mid, None, offered)
            raise
        # A callback, not code after the await: it must run even if the caller is cancelled
        # meanwhile (handed jobs are claimed once committed), and callbacks run in commit
        # order, which the tails rely on.
        future.add_done_callback(
            lambda f: self._settle_enqueue(
                None if f.cancelled() or f.exception() is not None else f.result(),
                batch,
                first_mid,
                rows,
                offered,
            )
        )
        return await asyncio.shield(future)

    def _settle_enqueue(
        self,
        answers: list[bool | IdConflict] | None,
        batch: Sequence[NewMessage],
        first_mid: int,
        rows: NewRows | None,
        offered: dict[str, int],
    ) -> None:
        """After an enqueue is answered (`answers` None: nothing written): every offer of
        room is answered with the jobs handed over, the messages no claim will come for
        leave `_fresh`, and the new ready jobs join their pool's tail."""
        fresh = self._fresh
        if answers is None or rows is None:
            for pool, n in offered.items():
                self._handoffs[pool].receive([], n)
            for mid in range(first_mid, first_mid + len(batch)):
                fresh.pop(mid, None)
            return
        for index, answer in enumerate(answers):
            if answer is not True:  # a duplicate or a conflict: not written
                fresh.pop(first_mid + index, None)
        for pool, n in offered.items():
            jobs: list[Job] = []
            for jid in rows.taken.get(pool, ()):
                mid = jid // FANOUT_LIMIT
                fresh.pop(mid, None)  # handed over: no claim will come
                m = batch[mid - first_mid].message
                jobs.append(Job(jid, pool, m, 0, m.created_at))
            self._handoffs[pool].receive(jobs, n)
        self._keep_ready(batch, rows)

    def _keep_ready(self, batch: Sequence[NewMessage], rows: NewRows) -> None:
        """The committed batch's ready jobs join their pool's tail, in claim order; a pool
        that had nothing queued before it starts a tail; a scheduled job may bring the
        pool's next_at forward (the tail's claims must then ask the file)."""
        tails, fresh, next_at = self._tails, self._fresh, self._next_at
        for pool, (gen, at) in rows.opens.items():
            tails[pool] = _Tail(gen)  # a tail left over holds only jobs claimed since
            if at is not None:
                # Jobs scheduled for later were queued: the time the writer read with the
                # batch replaces what the last claim of the file said, which may predate a
                # retry (a retry written since moves ready_gen: then the file answers).
                next_at[pool] = at
        first = rows.first_mid
        for jid, mid, pool, state, priority, available_at, _ in rows.jobs:
            if state != READY:
                if state == SCHEDULED and pool in next_at:
                    at = next_at[pool]
                    next_at[pool] = available_at if at is None else min(at, available_at)
                continue
            tail = tails.get(pool)
            if tail is None:
                continue
            queue = tail.jobs
            if (tail.priority is not None and priority != tail.priority) or (
                queue and available_at < queue[-1].enqueued_at
            ):
                # It sorts apart from the tail (another priority; or earlier: the clock
                # stepped back), open or closed: let the file order them.
                del tails[pool]
                continue
            if not tail.open:
                continue
            if len(queue) >= _TAIL_LIMIT:
                tail.open = False
                continue
            tail.priority = priority
            m = batch[mid - first].message
            fresh.pop(mid, None)  # the tail holds it now
            queue.append(Job(jid, pool, m, 0, available_at))

    def hand_off(self, pool: str, to: Handoff) -> None:
        self._handoffs[pool] = to

    async def claim(self, pool: str, limit: int, now: float) -> Claim:
        self._check()
        jobs: list[Job] = []
        tail = self._tails.get(pool)
        if tail is not None:
            from_tail = self._claim_tail(pool, tail, limit, now)
            if from_tail is not None:
                jobs, whole = from_tail
                if whole:
                    return Claim(jobs, self._next_at[pool])
        # Claims write nothing (see claims.Claims), but they go through the writer, which
        # owns the claim books; _write_volatile lets a group of them commit without an fsync.
        # No tail may hold what this claim takes (once finished, such a job would look
        # claimable to it): none is kept until the pool's queue is empty again.
        self._tails.pop(pool, None)
        try:
            rows, next_at = await self._write_volatile(
                writes.claim, self._claims, self._fresh, pool, limit - len(jobs), now
            )
        except BaseException:
            if jobs:  # taken from the tail, never to be handed out: ready again
                self._give_back(pool, jobs)
            raise
        finally:
            self._tails.pop(pool, None)  # one begun meanwhile may hold some of them
        self._next_at[pool] = next_at
        jobs += [
            Job(jid, pool, m if type(m) is Message else message(m, 0), attempts, at)
            for jid, attempts, at, m in rows
        ]
        return Claim(jobs, next_at)

    def _give_back(self, pool: str, jobs: list[Job]) -> None:
        self._claims[pool].give_back([job.key for job in jobs])
        with self._lock:
            c = self._counters[pool]
            c[0] += len(jobs)
            c[1] -= len(jobs)

    def _claim_tail(
        self, pool: str, tail: _Tail, limit: int, now: float
    ) -> tuple[list[Job], bool] | None:
        """Claim from the pool's tail: the jobs, and whether they are the whole answer (the
        tail held every ready job, or `limit` of them). None when the file must answer:
        the tail is stale, or a scheduled job may be due (the file's claim promotes it)."""
        books = self._claims.get(pool)
        if books is None or books.ready_gen != tail.gen:
            del self._tails[pool]
            return None
        if pool not in self._next_at:
            return None
        next_at = self._next_at[pool]
        if next_at is not None and next_at <= now:
            return None
        queue = tail.jobs
        got: list[Job] = []
        while queue and len(got) < limit and queue[0].enqueued_at <= now:
            some: list[Job] = []
            while queue and len(got) + len(some) < limit and queue[0].enqueued_at <= now:
                some.append(queue.popleft())
            held = books.take_from_tail([job.key for job in some])
            got += some if len(held) == len(some) else [j for j in some if j.key in held]
        if got:
            with self._lock:
                c = self._counters[pool]
                c[0] -= len(got)
                c[1] += len(got)
        if not queue and not tail.open:
            del self._tails[pool]  # what follows is in the file only
            return got, len(got) == limit
        return got, True

    async def complete(self, completions: Sequence[Completion]) -> None:
        self._check()
        if completions:
            # A retry needs nothing here: writing it moves the pool's ready_gen, so no tail
            # answers a claim until the file has (and its next_at) again.
            # The rows are built here, on the event loop, so the writer thread (the
            # bottleneck under load) only executes them.
            await self._write(writes.complete, self._claims, outcome_rows(completions))

    async def release(self, jobs: Sequence[Job]) -> None:
        self._check()
        if jobs:
            # Ready again, ahead of any tail: from now on, not once the writer gets to it.
            for pool in {job.pool for job in jobs}:
                self._tails.pop(pool, None)
            await self._write_volatile(writes.release, self._claims, jobs)

    async def get_message(self, message_id: str) -> MessageStatus | None:
        return await self._read(self._r_get_message, message_id)

    async def counts(self, now: float) -> dict[str, PoolCounts]:
        return await self._read(self._r_counts, now)

    async def dlq_list(
        self, selector: DlqFilter, limit: int, cursor: str | None = None
    ) -> tuple[list[DlqEntry], str | None]:
        return await self._read(reads.dlq_list, selector, limit, cursor)

    async def dlq_count(self, selector: DlqFilter) -> int:
        return await self._read(reads.dlq_count, selector)

    async def dlq_replay(
        self, selector: DlqFilter, now: float, interval: float = 0.0
    ) -> dict[str, int]:
        jids = await self._read(reads.dlq_jids, selector)
        # Replayed jobs are ready ahead of any tail, or scheduled: claims ask the file.
        self._tails.clear()
        self._next_at.clear()
        return await self._in_chunks(
            jids,
            lambda start, chunk: self._write(
                writes.replay, self._claims, chunk, now, start, interval
            ),
        )

    async def dlq_purge(self, selector: DlqFilter) -> dict[str, int]:
        jids = await self._read(reads.dlq_jids, selector)
        return await self._in_chunks(jids, lambda _, chunk: self._write(writes.purge, chunk))

    @staticmethod
    async def _in_chunks(
        jids: list[int],
        write: Callable[[int, list[int]], Awaitable[dict[str, int]]],
    ) -> dict[str, int]:
        """Run `write(start, chunk)` over `jids` a chunk (one commit) at a time; the counts
        per pool, summed. A failure after the first commit is PartlyDone, with what was."""
        out: dict[str, int] = {}
        for start in range(0, len(jids), _CHUNK):
            try:
                done = await write(start, jids[start : start + _CHUNK])
            except StoreError as exc:
                if not out:
                    raise
                raise PartlyDone(exc, out) from exc
            for pool, n in done.items():
                out[pool] = out.get(pool, 0) + n
        return out

    async def expire(self, delivered_before: float, ids_before: float | None = None) -> int:
        # A job cannot finish before its message was created, so only messages created
        # before the cutoff can hold expired jobs: mids up to `last` (mids follow creation).
        first, last = await self._read(reads.expiry_range, delivered_before)
        total = 0
        for start in range(first, last + 1, _CHUNK):
            total += await self._write(
                writes.expire, delivered_before, start, min(start + _CHUNK - 1, last)
            )
        ids_cutoff = delivered_before if ids_before is None else ids_before
        await self._write(writes.forget_ids, ids_cutoff)
        return total

    async def load_pool_settings(self) -> dict[str, dict[str, object]]:
        return await self._read(reads.pool_settings)

    async def save_pool_settings(self, pool: str, settings: Mapping[str, object]) -> None:
        await self._write(writes.save_settings, pool, to_json(dict(settings)))

    async def audit(self, entry: AuditEntry) -> None:
        await self._write(writes.audit, entry, to_json(entry.detail))

    async def audit_list(
        self, limit: int, cursor: str | None = None
    ) -> tuple[list[AuditEntry], str | None]:
        return await self._read(reads.audit_list, limit, cursor)
