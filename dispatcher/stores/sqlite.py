"""SQLite store: the embedded, durable default (`sqlite:///path/to/file.db`).

Storage layout, schema version 3 (`PRAGMA user_version`; `_MIGRATIONS` upgrades in order)::

    messages                      one row per accepted message
      mid INTEGER PRIMARY KEY       assigned by the writer thread (max + 1 at open)
      id TEXT UNIQUE                the message id: dedup
      tag, payload BLOB (the producer's bytes), headers (JSON object, NULL when empty),
      priority, created_at, available_at (as sent: created_at + delay), trace

    jobs                          one row per (message, pool)
      jid INTEGER PRIMARY KEY       Job.key: mid * 1024 + the pool's place in the fan-out
      mid, pool                     the message and the pool; jid = mid * 1024 + k, so a
                                    message's jobs are one rowid range (no extra index)
      state                         0 ready · 2 delivered · 3 dead · 4 scheduled (1 claimed:
                                    written only by versions before claims moved into the
                                    writer's memory, see _Claims; open() readies such rows)
      priority                      the message's, for jobs_ready
      available_at                  when it became or becomes ready: max(created_at,
                                    message.available_at), retry_at, or now + k*interval on
                                    replay; also Job.enqueued_at
      created_at                    the message's, for jobs_undone (oldest_at)
      attempts                      attempts in the current generation
      attempt_log                   JSON array of this generation's attempts (NULL: none)
      history                       JSON array of earlier generations' arrays (NULL: none)
      finished_at                   set when delivered or dead, NULL while undone
      dead_reason, last_error

      jobs_ready      (pool, priority DESC, available_at, jid) WHERE state = 0   claim order
      jobs_scheduled  (pool, available_at) WHERE state = 4     promote due jobs, next_at
      jobs_undone     (pool, created_at) WHERE finished_at IS NULL    oldest_at in O(log n)
      jobs_dead       (finished_at DESC, jid DESC) WHERE state = 3   DLQ pages
      jobs_dead_pool  (pool, finished_at DESC, jid DESC) WHERE state = 3

    pool_settings(pool TEXT PRIMARY KEY, settings TEXT)      JSON object per pool
    audit(aid INTEGER PRIMARY KEY, at, actor, action, target, detail JSON, count)

    dedup (version 2)             producer-given ids, remembered for the dedup window
      id TEXT PRIMARY KEY           the message id (WITHOUT ROWID)
      digest BLOB                   of tag and payload: the same id with another is refused
      until REAL                    end of the window; `expire` deletes rows past it

States 0 and 4 are both `State.QUEUED` outside. A job written with its available_at ahead
(a delayed message, a retry, a paced replay) is stored as 4; `claim` first moves the pool's
due 4s to 0 (one range on jobs_scheduled), then reads jobs_ready on from where the last claim
stopped, so scheduled jobs never sit in the way of a claim however many there are.

Claims are not written: a claimed job stays 0 and the writer keeps the claimed jids in
memory (`_Claims`, which the reader consults to show a job in flight). Those books change
as each request runs, so a later request of the same group sees them, and every change
keeps its inverse in the request's undo log for when the request or its group is rolled
back. Writing them cost a
row and an index update per message, only for a crash to make them ready again anyway.

Threading model:

- `dispatcher-sqlite-writer`: one plain thread owns the only writing connection and does
  every write. A coroutine puts (function, future) on a SimpleQueue and awaits the future.
  The thread takes everything queued, runs it in ONE transaction (a SAVEPOINT per request,
  so a failing request is rolled back alone and its future gets a StoreError), commits
  once, then settles all futures with one `call_soon_threadsafe` per event loop. Whatever
  arrives during a commit goes into the next one: group commit. `commits` counts them.
- `dispatcher-sqlite-reader`: a one-thread executor owning a read-only connection; WAL lets
  it read while the writer writes. The event loop never touches SQLite.
- Counts: queued, claimed and dead per pool are counters the writer keeps in memory (loaded
  by one scan at open, changed after each commit by what it wrote), so `counts()` stays
  cheap with a million queued jobs; scheduled and oldest_at are index range reads.

Durability: with the default synchronous=FULL, every group that holds a durable write
(enqueue, outcomes, operator actions) is fsynced before any of its futures resolve, so a 2xx
means on disk. A group of only claims and releases (whose only write is promoting due
scheduled jobs, which a restart's claim would redo) commits without an fsync.

The writer's Python is kept small, because it competes for the GIL with the event loop:
rows are built on the loop (`_NewRows`, `_outcome_rows`) and inserted with multi-row
statements (`_many`), each running in C without the GIL, instead of one step per row.

Bulk operations (DLQ replay and purge, expire) run as chunks of `_CHUNK` rows, each its
own write request, so the hot path keeps flowing between chunks; a failure part-way leaves
the earlier chunks done.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import functools
import math
import os
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

import msgspec

from ..errors import IdConflict, PartlyDone, StoreError
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
from .base import Claim, Store, require_pools

_T = TypeVar("_T")
_P = ParamSpec("_P")

_READY, _DELIVERED, _DEAD, _SCHEDULED = 0, 2, 3, 4  # 1, claimed: see _Claims
_DELIVERED_FIRST = -2  # not a stored state: groups first-attempt successes in _w_complete
_CHUNK: Final = 5000
#: jobs of one message per rowid range; config.MAX_POOLS keeps fan-out below it
FANOUT_LIMIT: Final = 1024
_CHECKPOINT_INTERVAL: Final = 0.25  # seconds between passive WAL checkpoints
#: seconds; see SqliteStore.open
_STATUS_READS: Final = 3  # reads of a message's rows before commits in between are let be
_AUTOCHECKPOINT_BACKSTOP: Final = 16384  # pages (64 MiB of WAL at 4 KiB pages)


class _Delta(dict[str, list[int]]):
    """What one request changes in the writer's memory. pool -> [queued, claimed, dead]
    counter changes, applied once the transaction commits; and `undo`, the inverses of the
    changes it made to the claim books, which take effect at once (a later request of the
    same group must see them) and are run backwards if the request is rolled back."""

    __slots__ = ("undo",)

    def __init__(self) -> None:
        super().__init__()
        self.undo: list[Callable[[], None]] = []


_Cursor = tuple[int, float, int]  # (priority, available_at, jid): a place in jobs_ready


def _undo(deltas: Sequence[_Delta]) -> None:
    """Take back the claim-book changes of rolled-back requests, latest first."""
    for delta in reversed(deltas):
        for undo in reversed(delta.undo):
            undo()


class _Claims:
    """One pool's claimed jobs, kept by the writer in memory rather than on disk.

    A claimed job stays `state = 0` in its row: marking it would rewrite the row and its
    jobs_ready entry on every claim, and a crash turns every claim back into a ready job
    anyway. `held` holds the claimed jids; `cursor` is the jobs_ready key of the last job
    looked at, so the next claim reads on from there instead of past every held job again.
    Anything written into the ready set ahead of the cursor (a release, a promotion, a
    replay, an enqueue that sorts first) clears it, and the next claim starts again from the
    head of the index. `future_at` is the latest time a ready job was written with: a claim
    made with an earlier `now` may not see it, so it must not leave a cursor past it.

    Every change happens at once, under the store's lock (the reader looks at `held`), and
    answers its inverse for the request's undo log. A finished job moves from `held` to
    `leaving` until its outcome commits: until then its row still reads ready, and the
    reader must go on calling it claimed (see SqliteStore._r_get_message)."""

    __slots__ = ("cursor", "future_at", "held", "leaving", "lock")

    def __init__(self, lock: threading.Lock) -> None:
        self.held: set[int] = set()
        self.leaving: set[int] = set()
        self.cursor: _Cursor | None = None
        self.future_at = 0.0
        self.lock = lock

    def _set(
        self, add: Sequence[int], remove: Sequence[int], cursor: _Cursor | None
    ) -> Callable[[], None]:
        with self.lock:
            before = self.cursor
            added = [jid for jid in add if jid not in self.held]
            removed = [jid for jid in set(remove) if jid in self.held]
            self.held.update(added)
            self.held.difference_update(removed)
            self.cursor = cursor

        def undo() -> None:
            with self.lock:
                self.held.difference_update(added)
                self.held.update(removed)
                self.cursor = before

        return undo

    def claimed(self, jids: Sequence[int], cursor: _Cursor | None) -> Callable[[], None]:
        return self._set(jids, (), cursor)

    def finished(self, jids: Sequence[int]) -> Callable[[], None]:
        with self.lock:
            done = [jid for jid in set(jids) if jid in self.held]
            self.held.difference_update(done)
            self.leaving.update(done)

        def undo() -> None:
            with self.lock:
                self.leaving.difference_update(done)
                self.held.update(done)

        return undo

    def in_flight(self, jid: int) -> bool:
        """Claimed, or finished by a write not yet committed (call under the lock)."""
        return jid in self.held or jid in self.leaving

    def released(self, jids: Sequence[int]) -> Callable[[], None]:
        return self._set((), jids, None)

    def rewind(self) -> Callable[[], None]:
        return self._set((), (), None)

    def arrived(self, priority: int, earliest: float, latest: float) -> Callable[[], None]:
        """Ready jobs were written: the first sorts at (priority, earliest) or later (their
        jids are new, higher than any the cursor has seen), the last is due at `latest`."""
        before = self.future_at
        self.future_at = max(before, latest)
        c = self.cursor
        ahead = c is not None and (priority > c[0] or (priority == c[0] and earliest < c[1]))
        undo_cursor = self._set((), (), None if ahead else c)

        def undo() -> None:
            undo_cursor()
            self.future_at = before

        return undo


# --- schema ------------------------------------------------------------------------------

_V1: Final = (
    """CREATE TABLE messages (
        mid INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        tag TEXT NOT NULL,
        payload BLOB NOT NULL,
        headers TEXT,
        priority INTEGER NOT NULL,
        created_at REAL NOT NULL,
        available_at REAL NOT NULL,
        trace TEXT
    )""",
    """CREATE TABLE jobs (
        jid INTEGER PRIMARY KEY,
        mid INTEGER NOT NULL,
        pool TEXT NOT NULL,
        state INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        available_at REAL NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        attempt_log TEXT,
        history TEXT,
        finished_at REAL,
        dead_reason TEXT,
        last_error TEXT
    )""",
    "CREATE INDEX jobs_ready ON jobs (pool, priority DESC, available_at, jid) WHERE state = 0",
    "CREATE INDEX jobs_scheduled ON jobs (pool, available_at) WHERE state = 4",
    "CREATE INDEX jobs_undone ON jobs (pool, created_at) WHERE finished_at IS NULL",
    "CREATE INDEX jobs_dead ON jobs (finished_at DESC, jid DESC) WHERE state = 3",
    "CREATE INDEX jobs_dead_pool ON jobs (pool, finished_at DESC, jid DESC) WHERE state = 3",
    "CREATE INDEX jobs_delivered ON jobs (finished_at) WHERE state = 2",
    "CREATE TABLE pool_settings (pool TEXT PRIMARY KEY, settings TEXT NOT NULL)",
    """CREATE TABLE audit (
        aid INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        count INTEGER
    )""",
)


def _statements(*sql: str) -> Callable[[sqlite3.Connection], None]:
    def migrate(db: sqlite3.Connection) -> None:
        for statement in sql:
            db.execute(statement)

    return migrate


_V2: Final = (
    "CREATE TABLE dedup (id TEXT PRIMARY KEY, digest BLOB NOT NULL, until REAL NOT NULL)"
    " WITHOUT ROWID",
    "CREATE INDEX dedup_until ON dedup (until)",
)

# Version 3: expire walks rowid ranges instead (see _w_expire); the index cost every
# completion a b-tree insert, about 4 us a message on the writer thread.
_V3: Final = ("DROP INDEX jobs_delivered",)

#: migration i brings the schema from version i to i + 1; append, never edit
_MIGRATIONS: Final[tuple[Callable[[sqlite3.Connection], None], ...]] = (
    _statements(*_V1),
    _statements(*_V2),
    _statements(*_V3),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

# --- statements on the hot path ----------------------------------------------------------

_INSERT_MESSAGE = ("INSERT INTO messages VALUES", "")
#: for ids nobody has checked: the rowcount tells whether one was already there
_INSERT_MESSAGE_NEW = ("INSERT OR IGNORE INTO messages VALUES", "")
_INSERT_JOB = (
    "INSERT INTO jobs (jid, mid, pool, state, priority, available_at, created_at) VALUES",
    "",
)
_ROWS_PER_STATEMENT: Final = 1024
_PROMOTE = "UPDATE jobs SET state = 0 WHERE state = 4 AND pool = ? AND available_at <= ?"
_CLAIM_COLUMNS = """j.jid, j.attempts, j.available_at, j.priority,
    m.id, m.tag, m.payload, m.created_at, m.priority, m.available_at, m.headers, m.trace
    FROM jobs j JOIN messages m ON m.mid = j.mid
    WHERE j.state = 0 AND j.pool = ?1 AND j.available_at <= ?2"""
#: the head of jobs_ready, in claim order
_CLAIM_HEAD = f"""SELECT {_CLAIM_COLUMNS}
    ORDER BY j.priority DESC, j.available_at, j.jid LIMIT ?3"""
#: what follows the cursor (?3, ?4, ?5) = (priority, available_at, jid), in three index
#: ranges, since the index mixes directions and a row-value bound (available_at, jid) > (a, j)
#: would only seek on available_at (a batch shares one time: it would rescan the batch)
_CLAIM_SAME_TIME = f"""SELECT {_CLAIM_COLUMNS}
    AND j.priority = ?3 AND j.available_at = ?4 AND j.jid > ?5
    ORDER BY j.jid LIMIT ?6"""
_CLAIM_LATER = f"""SELECT {_CLAIM_COLUMNS}
    AND j.priority = ?3 AND j.available_at > ?4
    ORDER BY j.available_at, j.jid LIMIT ?5"""
_CLAIM_LOWER = f"""SELECT {_CLAIM_COLUMNS}
    AND j.priority < ?3
    ORDER BY j.priority DESC, j.available_at, j.jid LIMIT ?4"""
_NEXT_AT = "SELECT min(available_at) FROM jobs WHERE state = 4 AND pool = ?"
# Outcomes: (head, tail) around a multi-row VALUES list, for _many; the jid comes last.
_DELIVERED_SQL = (
    """UPDATE jobs SET state = 2, attempts = attempts + 1,
        attempt_log = json_insert(coalesce(attempt_log, '[]'), '$[#]', json(v.column1)),
        finished_at = v.column2
    FROM (VALUES""",
    ") AS v WHERE jobs.jid = v.column3 AND jobs.state = 0",
)
#: the common case, success at the first attempt: the log is written whole, not parsed
_DELIVERED_FIRST_SQL = (
    """UPDATE jobs SET state = 2, attempts = 1, attempt_log = v.column1, finished_at = v.column2
    FROM (VALUES""",
    ") AS v WHERE jobs.jid = v.column3 AND jobs.state = 0",
)
_RETRY_SQL = (
    """UPDATE jobs SET state = 4, attempts = attempts + 1,
        attempt_log = json_insert(coalesce(attempt_log, '[]'), '$[#]', json(v.column1)),
        available_at = v.column2, last_error = v.column3
    FROM (VALUES""",
    ") AS v WHERE jobs.jid = v.column4 AND jobs.state = 0",
)
_DEAD_SQL = (
    """UPDATE jobs SET state = 3, attempts = attempts + 1,
        attempt_log = json_insert(coalesce(attempt_log, '[]'), '$[#]', json(v.column1)),
        finished_at = v.column2, dead_reason = v.column3, last_error = v.column4
    FROM (VALUES""",
    ") AS v WHERE jobs.jid = v.column5 AND jobs.state = 0",
)
_OUTCOME_SQL: Final = {
    _DEAD: _DEAD_SQL,
    _SCHEDULED: _RETRY_SQL,
    _DELIVERED: _DELIVERED_SQL,
    _DELIVERED_FIRST: _DELIVERED_FIRST_SQL,
}
_REPLAY = """
    UPDATE jobs SET
        state = CASE WHEN (c.key + ?2) * ?3 = 0 THEN 0 ELSE 4 END,
        available_at = ?1 + (c.key + ?2) * ?3,
        attempts = 0,
        history = json_insert(coalesce(history, '[]'), '$[#]', json(coalesce(attempt_log, '[]'))),
        attempt_log = NULL, finished_at = NULL, dead_reason = NULL, last_error = NULL
    FROM json_each(?4) AS c
    WHERE jobs.jid = c.value AND jobs.state = 3
    RETURNING jobs.pool"""
_DROP_ORPHANS = """
    DELETE FROM messages WHERE mid IN (SELECT value FROM json_each(?))
    AND NOT EXISTS (
        SELECT 1 FROM jobs WHERE jobs.jid BETWEEN messages.mid * 1024 AND messages.mid * 1024 + 1023
    )"""
_DLQ_COLUMNS = """j.jid, j.pool, j.attempts, j.last_error, j.finished_at, j.dead_reason,
    m.id, m.tag, m.payload, m.created_at, m.priority, m.available_at, m.headers, m.trace"""

_encode = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder(dict[str, str]).decode
_decode_attempts = msgspec.json.Decoder(list[Attempt]).decode
_decode_history = msgspec.json.Decoder(list[list[Attempt]]).decode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode


def _name_os_thread(name: str) -> None:
    """Give the running thread an OS-level name (Linux, 15 characters), so `top -H`, py-spy
    and /proc show which thread is the writer; Python's thread names stay in Python."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


@functools.lru_cache(maxsize=128)
def _values(sql: tuple[str, str], width: int, n: int) -> str:
    row = f"({', '.join('?' * width)})"
    return f"{sql[0]} {', '.join([row] * n)}{sql[1]}"


def _many(db: sqlite3.Connection, sql: tuple[str, str], rows: Sequence[tuple[Any, ...]]) -> int:
    """Run `sql` = (head, tail) over `rows` (all as wide as the first) as head, a multi-row
    VALUES list, tail: an INSERT ... VALUES, or an UPDATE ... FROM (VALUES ...) AS v. Not
    executemany: that steps once per row, and each step gives the GIL up and must win it
    back from the event loop; behind a busy loop that waiting, not SQLite, was most of the
    writer's time. Here each statement binds up to _ROWS_PER_STATEMENT rows, then runs them
    in C in one step. Returns the rows changed."""
    if not rows:
        return 0
    width = len(rows[0])
    # SQLite before 3.32 binds at most 999 parameters per statement
    per = min(_ROWS_PER_STATEMENT, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    done = 0
    for start in range(0, len(rows), per):
        part = rows[start : start + per]
        done += db.execute(
            _values(sql, width, len(part)), [v for row in part for v in row]
        ).rowcount
    return done


def _json(value: object) -> str:
    return _encode(value).decode()


def _ids_json(ids: Sequence[int]) -> str:
    return f"[{','.join(map(str, ids))}]"


def _contains_ci(haystack: str | None, needle: str | None) -> bool:
    # The same test as memory.contains_ci; SQLite's lower() only folds ASCII.
    return haystack is not None and needle is not None and needle.casefold() in haystack.casefold()


def _message(row: Sequence[Any], i: int) -> Message:
    """A Message from row[i:i+8] = id, tag, payload, created_at, priority, available_at,
    headers, trace."""
    headers = row[i + 6]
    return Message(
        row[i],
        row[i + 1],
        row[i + 2],
        row[i + 3],
        row[i + 4],
        row[i + 5],
        _decode_headers(headers) if headers else {},
        row[i + 7],
    )


def _store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error | OSError):  # OSError: the data directory, the disk
        err = StoreError(f"sqlite: {exc}")
        err.__cause__ = exc
        return err
    return exc


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, exc in items:
        if future.done():  # the awaiting task was cancelled
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


class _Request:
    __slots__ = ("durable", "fn", "future")

    def __init__(
        self, fn: Callable[[_Delta], Any], future: asyncio.Future[Any], durable: bool = True
    ) -> None:
        self.fn = fn
        self.future = future
        self.durable = durable


class _Stop:
    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future


_NEW, _OPEN, _CLOSING, _CLOSED = range(4)


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
        self._queue: queue.SimpleQueue[_Request | _Stop] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._dead = False  # set by the writer thread when it exits
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed: asyncio.Future[None] | None = None
        # Owned by the writer thread, except that the reader snapshots _counters under _lock.
        self._w: sqlite3.Connection
        self._next_mid = 0
        self._counters: dict[str, list[int]] = {}
        self._claims: dict[str, _Claims] = {}  # changed under _lock: the reader looks in
        self._lock = threading.Lock()
        self._checkpointer: threading.Thread | None = None
        self._fsync = True  # the writer connection's current synchronous mode is FULL
        self._stop_checkpoints = threading.Event()
        # Owned by the reader thread.
        self._r: sqlite3.Connection

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def data_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.path)) or "."

    async def open(self) -> int:
        if self._state != _NEW:
            raise StoreError("a SqliteStore opens once; make a new one to reopen the file")
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[int] = loop.create_future()
        self._writer = threading.Thread(
            target=self._writer_main, args=(opened,), name="dispatcher-sqlite-writer"
        )
        # Daemon: a process that exits without close() must not hang on this thread; what
        # was committed is on disk either way.
        self._writer.daemon = True
        self._writer.start()
        requeued = await opened
        self._checkpointer = threading.Thread(
            target=self._checkpoint_main, name="dispatcher-sqlite-checkpointer", daemon=True
        )
        self._checkpointer.start()
        self._reader = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="dispatcher-sqlite-reader"
        )
        self._state = _OPEN
        try:
            await self._read(self._r_open)
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
            if not self._dead:
                stopped: asyncio.Future[None] = loop.create_future()
                self._queue.put(_Stop(stopped))
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
        return self._state == _OPEN and not self._dead

    # --- plumbing ------------------------------------------------------------------------
    def _check(self) -> None:
        if self._state != _OPEN:
            raise StoreError("the sqlite store is not open")
        if self._dead:
            raise StoreError("the sqlite writer thread has stopped")

    async def _write(
        self, fn: Callable[Concatenate[_Delta, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        self._check()
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Request(lambda d: fn(d, *args, **kwargs), future))
        return await future

    async def _write_volatile(
        self, fn: Callable[Concatenate[_Delta, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """A write whose loss in a crash is harmless, because recovery reaches the same state
        anyway (claims and releases: a crash turns every claim back into a ready job). A group
        of only such writes commits without an fsync; the next durable commit's fsync covers
        their WAL frames too, and WAL keeps every commit atomic either way."""
        self._check()
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Request(lambda d: fn(d, *args, **kwargs), future, durable=False))
        return await future

    async def _read(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        if self._state != _OPEN or self._reader is None:
            raise StoreError("the sqlite store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, functools.partial(fn, *args, **kwargs))
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, cached_statements=256)
        db.execute("PRAGMA busy_timeout = 10000")
        db.create_function("contains_ci", 2, _contains_ci, deterministic=True)
        return db

    # --- the writer thread ---------------------------------------------------------------
    def _writer_main(self, opened: asyncio.Future[int]) -> None:
        _name_os_thread("sqlite-writer")
        try:
            requeued = self._w_open()
        except BaseException as exc:
            self._settle_all([(opened, None, _store_error(exc))])
            if hasattr(self, "_w"):
                self._w.close()
            return
        self._settle_all([(opened, requeued, None)])
        get, get_nowait = self._queue.get, self._queue.get_nowait
        stop: _Stop | None = None
        batch: list[_Request] = []
        try:
            while stop is None:
                batch = []
                item = get()
                while True:
                    if isinstance(item, _Stop):
                        stop = item
                    else:
                        batch.append(item)
                    try:
                        item = get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._run_group(batch)
        finally:
            # Normally the queue is empty here. If the thread is dying of a bug, fail what is
            # left (and stop accepting: _check sees the thread gone) instead of hanging.
            self._dead = True
            gone = StoreError("the writer has stopped")
            # Futures already settled are skipped by _settle (their callback runs first).
            leftovers: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = [
                (r.future, None, gone) for r in batch
            ]
            while True:
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
                leftovers.append((item.future, None, None if isinstance(item, _Stop) else gone))
            if stop is not None:
                leftovers.append((stop.future, None, None))
            self._w.close()
            self._settle_all(leftovers)

    def _checkpoint_main(self) -> None:
        """Copy committed WAL frames into the database file from a thread of its own, so
        the writer's commits never pay for checkpoints (a PASSIVE checkpoint waits for
        nobody and blocks nobody)."""
        _name_os_thread("sqlite-ckpt")
        try:
            db = self._connect()
        except sqlite3.Error:
            return  # the writer's backstop autocheckpoint still bounds the WAL
        try:
            while not self._stop_checkpoints.wait(_CHECKPOINT_INTERVAL):
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            db.close()

    def _w_open(self) -> int:
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self._w = db = self._connect()
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: cannot switch to WAL journal mode (got {mode})")
        db.execute(f"PRAGMA synchronous = {self.synchronous}")
        db.execute("PRAGMA cache_size = -65536")  # KiB: 64 MiB of page cache
        db.execute("PRAGMA temp_store = MEMORY")
        # Checkpoints run on the checkpointer thread (PASSIVE, off the hot path); this large
        # automatic threshold is only a backstop should that thread fall behind.
        db.execute(f"PRAGMA wal_autocheckpoint = {_AUTOCHECKPOINT_BACKSTOP}")
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this dispatcher's"
                    f" ({SCHEMA_VERSION})"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[target - 1](db)
                db.execute(f"PRAGMA user_version = {target}")
            # Only files written before claims moved into the writer's memory (_Claims) hold
            # claimed rows; today's claims vanish with the process, which is the same thing.
            requeued = db.execute("UPDATE jobs SET state = 0 WHERE state = 1").rowcount
            self._next_mid = db.execute("SELECT coalesce(max(mid), 0) FROM messages").fetchone()[0]
            counters: dict[str, list[int]] = {}
            slot = {_READY: 0, _SCHEDULED: 0, _DEAD: 2}
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

    def _run_group(self, batch: list[_Request]) -> None:
        """Run every request of `batch` in one transaction and settle their futures."""
        db = self._w
        failed: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        done: list[tuple[_Request, Any, _Delta]] = []
        if self.synchronous == "FULL":
            full = any(r.durable for r in batch)
            if full != self._fsync:
                db.execute(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")
                self._fsync = full
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            err = _store_error(exc)
            self._settle_all([(r.future, None, err) for r in batch])
            return
        for req in batch:
            delta = _Delta()
            try:
                db.execute("SAVEPOINT request")
                result = req.fn(delta)
                db.execute("RELEASE request")
            except Exception as exc:
                err = _store_error(exc)
                failed.append((req.future, None, err))
                _undo([delta])
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK TO request")
                        db.execute("RELEASE request")
                        continue
                    except sqlite3.Error:
                        # Not even the savepoint could be undone: give up the whole
                        # transaction rather than let the writer thread die of it.
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("ROLLBACK")
                # SQLite rolled the whole transaction back (disk full, I/O error): the
                # requests applied before this one are lost with it.
                failed.extend((r.future, None, err) for r, _, _ in done)
                _undo([d for _, _, d in done])
                done.clear()
                try:
                    db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error:
                    rest = batch[batch.index(req) + 1 :]
                    failed.extend((r.future, None, err) for r in rest)
                    self._settle_all(failed)
                    return
            else:
                done.append((req, result, delta))
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            err = _store_error(exc)
            failed.extend((r.future, None, err) for r, _, _ in done)
            _undo([d for _, _, d in done])
            self._settle_all(failed)
            return
        with self._lock:
            self.commits += 1  # under the lock: the reader compares it (_r_get_message)
            for books in self._claims.values():
                books.leaving.clear()  # their outcomes are on disk now
            counters = self._counters
            for _, _, delta in done:
                for pool, (dq, dc, dd) in delta.items():
                    c = counters.get(pool)
                    if c is None:
                        c = counters[pool] = [0, 0, 0]
                    c[0] += dq
                    c[1] += dc
                    c[2] += dd
        failed.extend((r.future, result, None) for r, result, _ in done)
        self._settle_all(failed)

    @staticmethod
    def _settle_all(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
        """Hand results to their event loops: one wake-up per loop, not one per request."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for item in items:
            by_loop.setdefault(item[0].get_loop(), []).append(item)
        for loop, group in by_loop.items():
            # RuntimeError: that loop is closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, group)

    # --- writes (run on the writer thread) -----------------------------------------------
    def _w_enqueue(self, d: _Delta, rows: _NewRows) -> list[bool]:
        db = self._w
        if not rows.keyed:
            # Ids the dispatcher made are new: try them all, and only if one was already
            # taken (a caller reusing an id without a digest) go back and sort them out.
            db.execute("SAVEPOINT enqueue")
            if _many(db, _INSERT_MESSAGE_NEW, rows.messages) == len(rows.messages):
                db.execute("RELEASE enqueue")
                _many(db, _INSERT_JOB, rows.jobs)
                self._w_arrived(d, rows)
                return [True] * len(rows.messages)
            db.execute("ROLLBACK TO enqueue")
            db.execute("RELEASE enqueue")
        seen = {
            row[0]
            for row in db.execute(
                "SELECT id FROM messages WHERE id IN (SELECT value FROM json_each(?))",
                (_json([m[1] for m in rows.messages]),),
            )
        }
        if rows.keyed:
            seen |= self._w_known_ids(rows)
        out: list[bool] = []
        kept: set[int] = set()
        for m in rows.messages:
            fresh = m[1] not in seen
            out.append(fresh)
            if fresh:
                seen.add(m[1])
                kept.add(m[0])
        if len(kept) < len(rows.messages):
            rows = rows.keep(kept)
        _many(db, _INSERT_MESSAGE, rows.messages)
        _many(db, _INSERT_JOB, rows.jobs)
        if rows.keyed:
            db.executemany(
                "INSERT OR REPLACE INTO dedup (id, digest, until) VALUES (?, ?, ?)",
                [(m_id, digest, until) for _, m_id, digest, until in rows.keyed],
            )
        self._w_arrived(d, rows)
        return out

    def _w_arrived(self, d: _Delta, rows: _NewRows) -> None:
        for pool, n in rows.counts.items():
            d[pool] = [n, 0, 0]
            if rows.first_ready is not None:
                d.undo.append(self._books(pool).arrived(*rows.first_ready))

    def _books(self, pool: str) -> _Claims:
        books = self._claims.get(pool)
        if books is None:
            books = self._claims[pool] = _Claims(self._lock)
        return books

    def _w_known_ids(self, rows: _NewRows) -> set[str]:
        """Ids remembered within their dedup window; IdConflict if one comes back (or
        repeats within the batch) with another digest. Runs before anything is written."""
        held: dict[str, bytes] = dict(
            self._w.execute(
                "SELECT id, digest FROM dedup WHERE id IN (SELECT value FROM json_each(?))"
                " AND until > ?",
                (_json([m_id for _, m_id, _, _ in rows.keyed]), rows.now),
            ).fetchall()
        )
        first: dict[str, bytes] = {}
        for index, m_id, digest, _ in rows.keyed:
            if held.get(m_id, digest) != digest or first.setdefault(m_id, digest) != digest:
                raise IdConflict(m_id, index)
        return set(held)

    def _w_claim(
        self, d: _Delta, pool: str, limit: int, now: float
    ) -> tuple[list[tuple[Any, ...]], float | None]:
        """Rows of up to `limit` claimable jobs (the Jobs are built by `claim`, off this
        thread), and the next scheduled job's time."""
        db = self._w
        books = self._books(pool)
        held = books.held
        cursor = None if db.execute(_PROMOTE, (pool, now)).rowcount else books.cursor
        rows: list[tuple[Any, ...]] = []
        while len(rows) < limit:
            want = limit - len(rows)
            if cursor is None:
                seen = db.execute(_CLAIM_HEAD, (pool, now, want)).fetchall()
            else:
                priority, available_at, _ = cursor
                seen = db.execute(_CLAIM_SAME_TIME, (pool, now, *cursor, want)).fetchall()
                if len(seen) < want:
                    seen += db.execute(
                        _CLAIM_LATER, (pool, now, priority, available_at, want - len(seen))
                    ).fetchall()
                if len(seen) < want:
                    seen += db.execute(
                        _CLAIM_LOWER, (pool, now, priority, want - len(seen))
                    ).fetchall()
            if not seen:
                break
            last = seen[-1]
            cursor = (last[3], last[2], last[0])
            # Held jobs are skipped; they sit in the range only after a rewind.
            rows.extend(r for r in seen if r[0] not in held)
            if len(seen) < want:
                break
        if rows:
            d[pool] = [-len(rows), len(rows), 0]
        if now < books.future_at:
            cursor = None  # a ready job due after `now` may sit behind it, unseen
        d.undo.append(books.claimed([r[0] for r in rows], cursor))
        next_at = db.execute(_NEXT_AT, (pool,)).fetchone()[0]
        return rows, next_at

    def _w_complete(self, d: _Delta, groups: dict[tuple[int, str], list[tuple[Any, ...]]]) -> None:
        """Apply outcome rows grouped by (fate, pool), as `complete` prepared them; the jid is
        the last column. Jobs not held (released meanwhile) are left alone."""
        db = self._w
        for (fate, pool), rows in groups.items():
            books = self._claims.get(pool)
            mine = [] if books is None else [row for row in rows if row[-1] in books.held]
            if books is None or not mine:
                continue
            n = _many(db, _OUTCOME_SQL[fate], mine)
            d.undo.append(books.finished([row[-1] for row in mine]))
            delta = d.setdefault(pool, [0, 0, 0])
            delta[1] -= n
            if fate == _SCHEDULED:
                delta[0] += n
            elif fate == _DEAD:
                delta[2] += n

    def _w_release(self, d: _Delta, jobs: Sequence[Job]) -> None:
        by_pool: dict[str, list[int]] = {}
        for job in jobs:
            by_pool.setdefault(job.pool, []).append(job.key)
        for pool, jids in by_pool.items():
            books = self._claims.get(pool)
            if books is None:
                continue
            mine = {jid for jid in jids if jid in books.held}
            d[pool] = [len(mine), -len(mine), 0]
            d.undo.append(books.released(list(mine)))

    def _w_replay(
        self, d: _Delta, jids: Sequence[int], now: float, first: int, interval: float
    ) -> dict[str, int]:
        out: dict[str, int] = {}
        for (pool,) in self._w.execute(_REPLAY, (now, first, interval, _ids_json(jids))):
            out[pool] = out.get(pool, 0) + 1
        for pool, n in out.items():
            d[pool] = [n, 0, -n]
            books = self._claims.get(pool)
            if books is not None:
                d.undo.append(books.rewind())
        return out

    def _w_purge(self, d: _Delta, jids: Sequence[int]) -> dict[str, int]:
        db = self._w
        out: dict[str, int] = {}
        mids: set[int] = set()
        deleted = db.execute(
            "DELETE FROM jobs WHERE jid IN (SELECT value FROM json_each(?)) AND state = 3"
            " RETURNING pool, mid",
            (_ids_json(jids),),
        ).fetchall()
        for pool, mid in deleted:
            out[pool] = out.get(pool, 0) + 1
            mids.add(mid)
        db.execute(_DROP_ORPHANS, (_ids_json(list(mids)),))
        for pool, n in out.items():
            d[pool] = [0, 0, -n]
        return out

    def _w_expire(self, d: _Delta, before: float, first_mid: int, last_mid: int) -> int:
        """Forget delivered jobs finished before `before` among the messages numbered
        first_mid..last_mid: a rowid range, so no index is needed (or paid for by every
        completion). The state and time test makes any range safe; a range only decides
        what is looked at."""
        db = self._w
        mids = db.execute(
            "DELETE FROM jobs WHERE jid BETWEEN ? AND ? AND state = 2 AND finished_at < ?"
            " RETURNING mid",
            (first_mid * FANOUT_LIMIT, last_mid * FANOUT_LIMIT + FANOUT_LIMIT - 1, before),
        ).fetchall()
        if mids:
            db.execute(_DROP_ORPHANS, (_ids_json(list({m for (m,) in mids})),))
        return len(mids)

    def _w_forget_ids(self, d: _Delta, before: float) -> None:
        self._w.execute("DELETE FROM dedup WHERE until < ?", (before,))

    def _w_save_settings(self, d: _Delta, pool: str, settings: str) -> None:
        self._w.execute(
            "INSERT INTO pool_settings (pool, settings) VALUES (?, ?)"
            " ON CONFLICT (pool) DO UPDATE SET settings = excluded.settings",
            (pool, settings),
        )

    def _w_audit(self, d: _Delta, e: AuditEntry, detail: str) -> None:
        self._w.execute(
            "INSERT INTO audit (at, actor, action, target, detail, count)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (e.at, e.actor, e.action, e.target, detail, e.count),
        )

    # --- reads (run on the reader thread) ------------------------------------------------
    def _r_open(self) -> None:
        self._r = self._connect()
        self._r.execute("PRAGMA query_only = ON")

    def _r_close(self) -> None:
        self._r.close()
        if self._writer is not None:
            self._writer.join()  # it has settled its last futures; only returning is left

    def _r_get_message(self, message_id: str) -> MessageStatus | None:
        # A claimed job's row reads ready: only the writer's books know it is claimed, and
        # they keep a finished job (`leaving`) until its outcome commits. Should a commit
        # land between this snapshot and the look at the books, the rows would be older
        # than the books: the commit count tells, and the rows are read again.
        for _ in range(_STATUS_READS - 1):
            with self._lock:
                commits = self.commits
            found = self._r_message_rows(message_id)
            with self._lock:
                if self.commits == commits:
                    held = self._in_flight(found)
                    break
        else:
            # Commits kept landing. Read with the lock held: a commit may still land, but
            # the writer cannot clear `leaving` after it until the books have been seen.
            with self._lock:
                found = self._r_message_rows(message_id)
                held = self._in_flight(found)
        if found is None:
            return None
        row, jobs = found
        return MessageStatus(
            message=_message(row, 1),
            jobs=[
                JobStatus(
                    pool=pool,
                    state=State.CLAIMED
                    if jid in held
                    else State(_READY if state == _SCHEDULED else state),
                    available_at=available_at,
                    attempts=_decode_attempts(log) if log else [],
                    history=_decode_history(history) if history else [],
                    finished_at=finished_at,
                    dead_reason=DeadReason(reason) if reason is not None else None,
                )
                for pool, state, available_at, log, history, finished_at, reason, jid in jobs
            ],
        )

    def _in_flight(self, found: tuple[Any, list[Any]] | None) -> set[int]:
        """The jids among these job rows that the books call claimed (under the lock)."""
        if found is None:
            return set()
        books = self._claims
        return {
            jid
            for pool, state, *_, jid in found[1]
            if state == _READY and pool in books and books[pool].in_flight(jid)
        }

    def _r_message_rows(self, message_id: str) -> tuple[Any, list[Any]] | None:
        """The message's row and its jobs' rows, from one snapshot."""
        db = self._r
        db.execute("BEGIN")
        try:
            row = db.execute(
                "SELECT mid, id, tag, payload, created_at, priority, available_at, headers,"
                " trace FROM messages WHERE id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                return None
            jobs = db.execute(
                "SELECT pool, state, available_at, attempt_log, history, finished_at,"
                " dead_reason, jid FROM jobs WHERE jid BETWEEN ? AND ? ORDER BY jid",
                (row[0] * FANOUT_LIMIT, row[0] * FANOUT_LIMIT + FANOUT_LIMIT - 1),
            ).fetchall()
        finally:
            db.execute("COMMIT")
        return row, jobs

    def _r_counts(self, now: float) -> dict[str, PoolCounts]:
        with self._lock:
            counters = [(pool, list(c)) for pool, c in self._counters.items() if any(c)]
        db = self._r
        out: dict[str, PoolCounts] = {}
        for pool, (queued, claimed, dead) in counters:
            scheduled = 0
            oldest_at = None
            if queued:
                scheduled = db.execute(
                    "SELECT count(*) FROM jobs WHERE state = 4 AND pool = ? AND available_at > ?",
                    (pool, now),
                ).fetchone()[0]
            if queued or claimed:
                oldest_at = db.execute(
                    "SELECT min(created_at) FROM jobs WHERE finished_at IS NULL AND pool = ?",
                    (pool,),
                ).fetchone()[0]
            out[pool] = PoolCounts(
                ready=max(queued - scheduled, 0),
                scheduled=scheduled,
                claimed=claimed,
                dead=dead,
                oldest_at=oldest_at,
            )
        return out

    def _r_dlq_list(
        self, sel: DlqFilter, limit: int, cursor: str | None
    ) -> tuple[list[DlqEntry], str | None]:
        where, params, _ = _dlq_where(sel)
        if cursor is not None:
            where += " AND (j.finished_at, j.jid) < (?, ?)"
            params.extend(_parse_cursor(cursor))
        rows = self._r.execute(
            f"SELECT {_DLQ_COLUMNS} FROM jobs j JOIN messages m ON m.mid = j.mid"  # noqa: S608
            f" WHERE {where} ORDER BY j.finished_at DESC, j.jid DESC LIMIT ?",
            (*params, max(limit, 0) + 1),
        ).fetchall()
        more = len(rows) > limit > 0
        rows = rows[: max(limit, 0)]
        entries = [
            DlqEntry(
                message=_message(r, 6),
                pool=r[1],
                attempts=r[2],
                error=r[3],
                failed_at=r[4],
                reason=DeadReason(r[5]),
            )
            for r in rows
        ]
        return entries, (f"{rows[-1][4]!r}:{rows[-1][0]}" if more else None)

    def _r_dlq_count(self, sel: DlqFilter) -> int:
        where, params, join = _dlq_where(sel)
        source = "jobs j JOIN messages m ON m.mid = j.mid" if join else "jobs j"
        row = self._r.execute(
            f"SELECT count(*) FROM {source} WHERE {where}",  # noqa: S608
            params,
        ).fetchone()
        return int(row[0])

    def _r_dlq_jids(self, sel: DlqFilter) -> list[int]:
        """Matching DEAD jobs, oldest failure first."""
        where, params, join = _dlq_where(sel)
        source = "jobs j JOIN messages m ON m.mid = j.mid" if join else "jobs j"
        return [
            jid
            for (jid,) in self._r.execute(
                f"SELECT j.jid FROM {source} WHERE {where}"  # noqa: S608
                " ORDER BY j.finished_at, j.jid",
                params,
            )
        ]

    def _r_expiry_range(self, before: float) -> tuple[int, int]:
        """The lowest mid, and the highest mid of a message created before `before` (found
        by bisection on the rowid: mids are assigned in creation order). (1, 0) if none."""
        db = self._r
        low_row = db.execute("SELECT min(mid), max(mid) FROM messages").fetchone()
        if low_row[0] is None:
            return 1, 0
        low, high = int(low_row[0]), int(low_row[1])
        first = low

        def created(mid: int) -> float | None:
            row = db.execute(
                "SELECT created_at FROM messages WHERE mid >= ? ORDER BY mid LIMIT 1", (mid,)
            ).fetchone()
            return None if row is None else float(row[0])

        # Invariant: messages from mid `high + 1` on were created at or after `before`.
        if (created(low) or before) >= before:
            return first, first - 1
        while low < high:
            mid = (low + high + 1) // 2
            at = created(mid)
            if at is not None and at < before:
                low = mid
            else:
                high = mid - 1
        return first, low

    def _r_settings(self) -> dict[str, dict[str, object]]:
        rows = self._r.execute("SELECT pool, settings FROM pool_settings").fetchall()
        return {pool: _decode_object(settings) for pool, settings in rows}

    def _r_audit(self, limit: int, cursor: str | None) -> tuple[list[AuditEntry], str | None]:
        before = int(cursor) if cursor is not None else None
        rows = self._r.execute(
            "SELECT aid, at, actor, action, target, detail, count FROM audit"
            " WHERE ?1 IS NULL OR aid < ?1 ORDER BY aid DESC LIMIT ?2",
            (before, max(limit, 0) + 1),
        ).fetchall()
        more = len(rows) > limit > 0
        rows = rows[: max(limit, 0)]
        entries = [
            AuditEntry(
                at=at,
                actor=actor,
                action=action,
                target=target,
                detail=_decode_object(detail),
                count=count,
            )
            for _, at, actor, action, target, detail, count in rows
        ]
        return entries, (str(rows[-1][0]) if more else None)

    # --- the Store interface -------------------------------------------------------------
    async def enqueue(self, batch: Sequence[NewMessage]) -> list[bool]:
        self._check()
        if not batch:
            return []
        require_pools(batch)
        # Rows are built here, on the event loop, and numbered here too: the writer thread
        # (the bottleneck under load) only executes them. Mids follow the order of calls,
        # which is the order of the writer's queue; a duplicate leaves a gap, which is fine.
        rows = _NewRows(batch, self._next_mid)
        self._next_mid += len(batch)
        return await self._write(self._w_enqueue, rows)

    async def claim(self, pool: str, limit: int, now: float) -> Claim:
        # Claims write nothing (see _Claims), but they go through the writer, which owns
        # the claim books; _write_volatile lets a group of them commit without an fsync.
        rows, next_at = await self._write_volatile(self._w_claim, pool, limit, now)
        return Claim([Job(r[0], pool, _message(r, 4), r[1], r[2]) for r in rows], next_at)

    async def complete(self, completions: Sequence[Completion]) -> None:
        self._check()
        if completions:
            # The rows are built here, on the event loop, so the writer thread (the
            # bottleneck under load) only executes them.
            await self._write(self._w_complete, _outcome_rows(completions))

    async def release(self, jobs: Sequence[Job]) -> None:
        self._check()
        if jobs:
            await self._write_volatile(self._w_release, jobs)

    async def get_message(self, message_id: str) -> MessageStatus | None:
        return await self._read(self._r_get_message, message_id)

    async def counts(self, now: float) -> dict[str, PoolCounts]:
        return await self._read(self._r_counts, now)

    async def dlq_list(
        self, selector: DlqFilter, limit: int, cursor: str | None = None
    ) -> tuple[list[DlqEntry], str | None]:
        return await self._read(self._r_dlq_list, selector, limit, cursor)

    async def dlq_count(self, selector: DlqFilter) -> int:
        return await self._read(self._r_dlq_count, selector)

    async def dlq_replay(
        self, selector: DlqFilter, now: float, interval: float = 0.0
    ) -> dict[str, int]:
        jids = await self._read(self._r_dlq_jids, selector)
        return await self._in_chunks(
            jids, lambda start, chunk: self._write(self._w_replay, chunk, now, start, interval)
        )

    async def dlq_purge(self, selector: DlqFilter) -> dict[str, int]:
        jids = await self._read(self._r_dlq_jids, selector)
        return await self._in_chunks(jids, lambda _, chunk: self._write(self._w_purge, chunk))

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
        first, last = await self._read(self._r_expiry_range, delivered_before)
        total = 0
        for start in range(first, last + 1, _CHUNK):
            total += await self._write(
                self._w_expire, delivered_before, start, min(start + _CHUNK - 1, last)
            )
        ids_cutoff = delivered_before if ids_before is None else ids_before
        await self._write(self._w_forget_ids, ids_cutoff)
        return total

    async def load_pool_settings(self) -> dict[str, dict[str, object]]:
        return await self._read(self._r_settings)

    async def save_pool_settings(self, pool: str, settings: Mapping[str, object]) -> None:
        await self._write(self._w_save_settings, pool, _json(dict(settings)))

    async def audit(self, entry: AuditEntry) -> None:
        await self._write(self._w_audit, entry, _json(entry.detail))

    async def audit_list(
        self, limit: int, cursor: str | None = None
    ) -> tuple[list[AuditEntry], str | None]:
        return await self._read(self._r_audit, limit, cursor)


class _NewRows:
    """A batch of new messages as the rows the writer inserts. Mids are numbered from
    `last_mid` + 1 in batch order; `keyed` holds (index, id, digest, until) of producer ids."""

    __slots__ = ("counts", "first_ready", "jobs", "keyed", "messages", "now")
    #: (highest priority, earliest, latest time) of the new ready jobs, for the claim books
    first_ready: tuple[int, float, float] | None

    def __init__(self, batch: Sequence[NewMessage], last_mid: int) -> None:
        self.messages: list[tuple[Any, ...]] = []
        self.jobs: list[tuple[Any, ...]] = []
        self.keyed: list[tuple[int, str, bytes, float]] = []
        self.counts: dict[str, int] = {}
        self.now = batch[0].message.created_at
        add_message, add_job = self.messages.append, self.jobs.append
        per_route: dict[tuple[str, ...], int] = {}
        # The highest priority and earliest time among the new ready jobs, for the claim
        # cursors (taken apart, the pair may belong to two messages: that errs on the safe side).
        priority: float = -math.inf
        earliest, latest = math.inf, -math.inf
        mid = last_mid
        for index, new in enumerate(batch):
            m = new.message
            mid += 1
            add_message(
                (
                    mid,
                    m.id,
                    m.tag,
                    m.payload,
                    _json(m.headers) if m.headers else None,
                    m.priority,
                    m.created_at,
                    m.available_at,
                    m.trace,
                )
            )
            if new.digest is not None:
                self.keyed.append((index, m.id, new.digest, new.dedup_until))
            if m.available_at > m.created_at:
                state, available_at = _SCHEDULED, m.available_at
            else:
                state, available_at = _READY, m.created_at
                if m.priority > priority:
                    priority = m.priority
                if available_at < earliest:
                    earliest = available_at
                if available_at > latest:
                    latest = available_at
            pools = new.pools
            if len(pools) == 1:
                add_job(
                    (
                        mid * FANOUT_LIMIT,
                        mid,
                        pools[0],
                        state,
                        m.priority,
                        available_at,
                        m.created_at,
                    )
                )
            else:
                pools = tuple(dict.fromkeys(pools))
                for k, pool in enumerate(pools):
                    add_job(
                        (
                            mid * FANOUT_LIMIT + k,
                            mid,
                            pool,
                            state,
                            m.priority,
                            available_at,
                            m.created_at,
                        )
                    )
            per_route[pools] = per_route.get(pools, 0) + 1
        for pools, n in per_route.items():
            for pool in pools:
                self.counts[pool] = self.counts.get(pool, 0) + n
        #: where the first of the new ready jobs sorts, for the claim cursors
        self.first_ready = None if earliest == math.inf else (int(priority), earliest, latest)

    def keep(self, mids: set[int]) -> _NewRows:
        """These rows without the messages not in `mids` (duplicates)."""
        kept = object.__new__(_NewRows)
        kept.now, kept.first_ready = self.now, self.first_ready
        kept.messages = [m for m in self.messages if m[0] in mids]
        kept.jobs = [j for j in self.jobs if j[1] in mids]
        kept.keyed = [k for k in self.keyed if self.messages[k[0]][0] in mids]
        kept.counts = {}
        for job in kept.jobs:
            kept.counts[job[2]] = kept.counts.get(job[2], 0) + 1
        return kept


def _outcome_rows(
    completions: Sequence[Completion],
) -> dict[tuple[int, str], list[tuple[Any, ...]]]:
    """Parameter rows of the outcome statements, grouped by (fate, pool); jid last."""
    groups: dict[tuple[int, str], list[tuple[Any, ...]]] = {}
    for c in completions:
        a = c.attempt
        log = _json(a)
        if c.dead is not None:
            key = (_DEAD, c.job.pool)
            row: tuple[Any, ...] = (
                log,
                a.started_at + a.duration,
                c.dead.value,
                a.error,
                c.job.key,
            )
        elif c.retry_at is not None:
            key = (_SCHEDULED, c.job.pool)
            row = (log, c.retry_at, a.error, c.job.key)
        elif c.job.attempts == 0:
            key = (_DELIVERED_FIRST, c.job.pool)
            row = (f"[{log}]", a.started_at + a.duration, c.job.key)
        else:
            key = (_DELIVERED, c.job.pool)
            row = (log, a.started_at + a.duration, c.job.key)
        rows = groups.get(key)
        if rows is None:
            groups[key] = [row]
        else:
            rows.append(row)
    return groups


def _dlq_where(sel: DlqFilter) -> tuple[str, list[object], bool]:
    """SQL conditions on `jobs j` (and `messages m` when the bool says a join is needed)."""
    where = ["j.state = 3"]
    params: list[object] = []
    join = False
    if sel.ids is not None:
        where.append("m.id IN (SELECT value FROM json_each(?))")
        params.append(_json(list(sel.ids)))
        join = True
    if sel.pool is not None:
        where.append("j.pool = ?")
        params.append(sel.pool)
    if sel.tag is not None:
        where.append("m.tag = ?")
        params.append(sel.tag)
        join = True
    if sel.error is not None:
        where.append("contains_ci(j.last_error, ?)")
        params.append(sel.error)
    if sel.since is not None:
        where.append("j.finished_at >= ?")
        params.append(sel.since)
    return " AND ".join(where), params, join


def _parse_cursor(cursor: str) -> tuple[float, int]:
    try:
        at, jid = cursor.rsplit(":", 1)
        return float(at), int(jid)
    except ValueError:
        raise ValueError(f"invalid cursor: {cursor!r}") from None
