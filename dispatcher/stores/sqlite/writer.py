"""The group-commit writer: one thread owns the only writing connection and runs every
write, many requests to a transaction, one fsync to a group (see the package docstring);
and the checkpointer thread beside it. Nothing here knows what the requests write."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

from ...errors import StoreError
from .claims import Delta, undo_all

_CHECKPOINT_INTERVAL: Final = 0.25  # seconds between passive WAL checkpoints

#: a request: runs on the writer thread, with its connection and the request's Delta
Write = Callable[[sqlite3.Connection, Delta], Any]
_Settled = list[tuple[asyncio.Future[Any], Any, BaseException | None]]


def name_os_thread(name: str) -> None:
    """Give the running thread an OS-level name (Linux, 15 characters), so `top -H`, py-spy
    and /proc show which thread is the writer; Python's thread names stay in Python."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error | OSError):  # OSError: the data directory, the disk
        err = StoreError(f"sqlite: {exc}")
        err.__cause__ = exc
        return err
    return exc


def _settle(items: _Settled) -> None:
    for future, result, exc in items:
        if future.done():  # the awaiting task was cancelled
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


def _settle_all(items: _Settled) -> None:
    """Hand results to their event loops: one wake-up per loop, not one per request."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
    for item in items:
        by_loop.setdefault(item[0].get_loop(), []).append(item)
    for loop, group in by_loop.items():
        # RuntimeError: that loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, group)


class _Request:
    __slots__ = ("durable", "fn", "future")

    def __init__(self, fn: Write, future: asyncio.Future[Any], durable: bool = True) -> None:
        self.fn = fn
        self.future = future
        self.durable = durable


class _Stop:
    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future


class Writer:
    """The `dispatcher-sqlite-writer` thread and its queue. `on_commit` runs on the thread
    after each commit, with the Deltas of the requests that commit holds."""

    def __init__(self, synchronous: str, on_commit: Callable[[Sequence[Delta]], None]) -> None:
        self.synchronous = synchronous
        self.dead = False  # set by the writer thread when it exits
        self.thread: threading.Thread | None = None
        self.db: sqlite3.Connection  # the writing connection, owned by the thread
        self._queue: queue.SimpleQueue[_Request | _Stop] = queue.SimpleQueue()
        self._on_commit = on_commit
        self._fsync = True  # the connection's current synchronous mode is FULL
        #: the Deltas of the running group's requests done so far (writes see them uncommitted)
        self.pending: list[Delta] = []

    def start(
        self,
        connect: Callable[[], sqlite3.Connection],
        prepare: Callable[[sqlite3.Connection], int],
        opened: asyncio.Future[int],
    ) -> None:
        """Start the thread: it connects, runs `prepare` (migrations, recovery), settles
        `opened` with what `prepare` answered (or its error), then serves the queue."""
        self.thread = threading.Thread(
            target=self._main, args=(connect, prepare, opened), name="dispatcher-sqlite-writer"
        )
        # Daemon: a process that exits without close() must not hang on this thread; what
        # was committed is on disk either way.
        self.thread.daemon = True
        self.thread.start()

    def put(self, fn: Write, future: asyncio.Future[Any], *, durable: bool) -> None:
        """Queue `fn`; its result or error settles `future`. See SqliteStore._write_volatile
        for what a write that is not `durable` may skip."""
        self._queue.put(_Request(fn, future, durable))

    def stop(self, stopped: asyncio.Future[None]) -> None:
        """Settle `stopped` once everything queued before it is done and the thread ends."""
        self._queue.put(_Stop(stopped))

    def _main(
        self,
        connect: Callable[[], sqlite3.Connection],
        prepare: Callable[[sqlite3.Connection], int],
        opened: asyncio.Future[int],
    ) -> None:
        name_os_thread("sqlite-writer")
        try:
            self.db = connect()
            requeued = prepare(self.db)
        except BaseException as exc:
            _settle_all([(opened, None, _store_error(exc))])
            if hasattr(self, "db"):
                self.db.close()
            return
        _settle_all([(opened, requeued, None)])
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
            # left (and stop accepting: the store sees `dead`) instead of hanging.
            self.dead = True
            gone = StoreError("the writer has stopped")
            # Futures already settled are skipped by _settle (their callback runs first).
            leftovers: _Settled = [(r.future, None, gone) for r in batch]
            while True:
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
                leftovers.append((item.future, None, None if isinstance(item, _Stop) else gone))
            if stop is not None:
                leftovers.append((stop.future, None, None))
            self.db.close()
            _settle_all(leftovers)

    def _run_group(self, batch: list[_Request]) -> None:
        """Run every request of `batch` in one transaction and settle their futures."""
        db = self.db
        failed: _Settled = []
        done: list[tuple[_Request, Any, Delta]] = []
        pending: list[Delta] = []
        self.pending = pending
        if self.synchronous == "FULL":
            full = any(r.durable for r in batch)
            if full != self._fsync:
                db.execute(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")
                self._fsync = full
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            err = _store_error(exc)
            _settle_all([(r.future, None, err) for r in batch])
            return
        for req in batch:
            delta = Delta()
            try:
                db.execute("SAVEPOINT request")
                result = req.fn(db, delta)
                db.execute("RELEASE request")
            except Exception as exc:
                err = _store_error(exc)
                failed.append((req.future, None, err))
                undo_all([delta])
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
                undo_all([d for _, _, d in done])
                done.clear()
                pending.clear()
                try:
                    db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error:
                    rest = batch[batch.index(req) + 1 :]
                    failed.extend((r.future, None, err) for r in rest)
                    _settle_all(failed)
                    return
            else:
                done.append((req, result, delta))
                pending.append(delta)
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            err = _store_error(exc)
            failed.extend((r.future, None, err) for r, _, _ in done)
            undo_all([d for _, _, d in done])
            self.pending = []
            _settle_all(failed)
            return
        self._on_commit(pending)
        self.pending = []
        failed.extend((r.future, result, None) for r, result, _ in done)
        _settle_all(failed)


def checkpoints(connect: Callable[[], sqlite3.Connection], stop: threading.Event) -> None:
    """Copy committed WAL frames into the database file from a thread of its own, so
    the writer's commits never pay for checkpoints (a PASSIVE checkpoint waits for
    nobody and blocks nobody). Runs until `stop` is set."""
    name_os_thread("sqlite-ckpt")
    try:
        db = connect()
    except sqlite3.Error:
        return  # the writer's backstop autocheckpoint still bounds the WAL
    try:
        while not stop.wait(_CHECKPOINT_INTERVAL):
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        db.close()
