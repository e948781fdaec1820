"""What only the SQLite store promises: its pragmas and schema version, group commit on one
writer thread, isolation of a failing request, durability across a crash, drain on close."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.errors import IdConflict, StoreError
from dispatcher.message import (
    Attempt,
    Completion,
    DeadReason,
    DlqFilter,
    Job,
    NewMessage,
    Outcome,
    State,
)
from dispatcher.stores.base import format_dlq_cursor
from dispatcher.stores.sqlite import SCHEMA_VERSION, SqliteStore, schema
from dispatcher.stores.sqlite import reads as sqlite_reads
from dispatcher.stores.sqlite import store as sqlite_module
from dispatcher.stores.sqlite import writes as sqlite_writes
from dispatcher.stores.sqlite.claims import ClaimBooks, Delta
from dispatcher.stores.sqlite.rows import NewRows, outcome_rows

from .factories import T0, dead, delivered, message, new_message, retry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "dispatcher.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(db_path))
    await s.open()
    yield s
    await s.close()


async def on_writer(store: SqliteStore, fn: Any) -> Any:
    """Run `fn(connection)` on the writer thread, inside its group transaction."""
    return await store._write(lambda db, _delta: fn(db))


async def test_pragmas_and_schema_version(store: SqliteStore, db_path: Path) -> None:
    assert db_path.exists()  # the parent directories were made
    assert await on_writer(store, lambda db: db.execute("PRAGMA synchronous").fetchone()[0]) == 2
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"messages", "jobs", "pool_settings", "audit"} <= tables
    db.close()


async def test_synchronous_normal(tmp_path: Path) -> None:
    s = SqliteStore(str(tmp_path / "n.db"), synchronous="normal")
    await s.open()
    try:
        assert await on_writer(s, lambda db: db.execute("PRAGMA synchronous").fetchone()[0]) == 1
    finally:
        await s.close()
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore("x.db", synchronous="off")


async def test_open_leaves_the_gil_switch_interval_alone(db_path: Path) -> None:
    """Library code changes nothing process-wide: `dispatcher serve` tunes the interval."""
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        s = SqliteStore(str(db_path))
        await s.open()
        assert sys.getswitchinterval() == pytest.approx(0.005)
        await s.close()
    finally:
        sys.setswitchinterval(before)


async def test_big_batches_fit_an_old_sqlite_parameter_limit(store: SqliteStore) -> None:
    # SQLite before 3.32 binds at most 999 parameters per statement.
    limit = sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER
    await on_writer(store, lambda db: db.setlimit(limit, 999))
    assert await store.enqueue([new_message(f"m{i}") for i in range(1000)]) == [True] * 1000
    jobs = (await store.claim("p", 1000, T0 + 1)).jobs
    assert len(jobs) == 1000
    await store.complete([delivered(j, T0 + 2) for j in jobs])
    assert await store.counts(T0 + 3) == {}


async def test_one_named_writer_thread(store: SqliteStore) -> None:
    names = [t.name for t in threading.enumerate()]
    assert names.count("dispatcher-sqlite-writer") == 1
    assert await on_writer(store, lambda _db: threading.current_thread().name) == (
        "dispatcher-sqlite-writer"
    )
    await store.close()
    assert "dispatcher-sqlite-writer" not in [t.name for t in threading.enumerate()]


async def test_group_commit_batches_concurrent_requests(store: SqliteStore) -> None:
    before = store.commits
    results = await asyncio.gather(*(store.enqueue([new_message(f"m{i}")]) for i in range(500)))
    assert results == [[True]] * 500
    commits = store.commits - before
    assert 1 <= commits <= 50, commits
    assert (await store.counts(T0))["p"].ready == 500


async def test_a_failing_request_does_not_fail_its_group(store: SqliteStore) -> None:
    await store.enqueue([new_message("existing")])
    release = threading.Event()
    # Hold the writer busy so that the next requests queue up and form one group.
    busy = asyncio.ensure_future(on_writer(store, lambda _db: release.wait(5)))
    await asyncio.sleep(0.05)
    before = store.commits

    def write_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO pool_settings VALUES ('ghost', '{}')")
        db.execute(
            "INSERT INTO messages VALUES (1, 'dup-mid', 't', x'00', NULL, 0, 0, 0, NULL)"
        )  # mid 1 is taken: IntegrityError

    a = asyncio.ensure_future(store.enqueue([new_message("a")]))
    bad = asyncio.ensure_future(on_writer(store, write_then_fail))
    b = asyncio.ensure_future(store.enqueue([new_message("b")]))
    await asyncio.sleep(0.05)
    release.set()
    assert await busy is True
    assert await a == [True]
    assert await b == [True]
    with pytest.raises(StoreError, match="UNIQUE"):
        await bad
    # One commit for the busy request, then ONE for a, bad and b together.
    assert store.commits - before == 2
    assert await store.load_pool_settings() == {}  # the failed request left nothing behind
    assert await store.get_message("a") is not None
    assert await store.get_message("b") is not None
    assert (await store.counts(T0))["p"].ready == 3


async def test_commit_failure_fails_every_request_of_the_group(store: SqliteStore) -> None:
    # A request that breaks the transaction itself (COMMIT inside) makes COMMIT fail.
    with pytest.raises(StoreError):
        await on_writer(store, lambda db: db.execute("COMMIT"))
    # The writer survives and keeps serving.
    assert await store.enqueue([new_message("after")]) == [True]
    assert await store.ping()


async def test_a_savepoint_that_cannot_be_undone_fails_the_group_not_the_writer(
    store: SqliteStore,
) -> None:
    def undo_own_savepoint_then_fail(db: sqlite3.Connection) -> None:
        db.execute("RELEASE request")  # so ROLLBACK TO request itself fails
        raise sqlite3.OperationalError("boom")

    with pytest.raises(StoreError, match="boom"):
        await on_writer(store, undo_own_savepoint_then_fail)
    assert await store.ping()
    assert await store.enqueue([new_message("after")]) == [True]


# Tolerated: the writer thread is killed on purpose, and pytest reports the thread's death.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_dead_writer_fails_fast_instead_of_hanging(store: SqliteStore) -> None:
    def die(_db: sqlite3.Connection) -> None:
        raise SystemExit  # a BaseException no request handler catches: the thread exits

    with pytest.raises(StoreError, match="stopped"):
        await on_writer(store, die)
    assert not await store.ping()
    with pytest.raises(StoreError, match="stopped"):
        await store.enqueue([new_message("m")])
    await store.close()  # still returns


async def test_close_drains_pending_work(db_path: Path) -> None:
    s = SqliteStore(str(db_path))
    await s.open()
    tasks = [asyncio.ensure_future(s.enqueue([new_message(f"m{i}")])) for i in range(200)]
    await asyncio.sleep(0)  # let every task put its request on the queue
    await s.close()
    assert [t.result() for t in tasks] == [[True]] * 200
    with pytest.raises(StoreError):
        await s.enqueue([new_message("late")])

    s2 = SqliteStore(str(db_path))
    await s2.open()
    try:
        assert (await s2.counts(T0))["p"].ready == 200
    finally:
        await s2.close()


async def test_counters_are_rebuilt_on_open(db_path: Path) -> None:
    s = SqliteStore(str(db_path))
    await s.open()
    await s.enqueue([new_message(f"m{i}", "a", "b", created=T0 + i) for i in range(5)])
    jobs = (await s.claim("a", 2, T0 + 10)).jobs
    before = await s.counts(T0 + 10)
    claimed = await s.get_message(jobs[0].message.id)
    await s.close()
    assert claimed is not None
    assert [j.state for j in claimed.jobs] == [State.CLAIMED, State.QUEUED]

    s = SqliteStore(str(db_path))
    assert await s.open() == 0  # claims live in memory: nothing on disk to requeue
    try:
        after = await s.counts(T0 + 10)
        assert before["b"] == after["b"]
        assert (after["a"].ready, after["a"].claimed) == (5, 0)
        assert (before["a"].ready, before["a"].claimed) == (3, 2)
        status = await s.get_message(jobs[0].message.id)
        assert status is not None
        assert status.jobs[0].state == State.QUEUED
    finally:
        await s.close()


async def test_claims_marked_on_disk_by_earlier_versions_are_requeued(db_path: Path) -> None:
    s = SqliteStore(str(db_path))
    await s.open()
    await s.enqueue([new_message(f"m{i}", "a", created=T0 + i) for i in range(3)])
    await s.close()
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        db.execute("UPDATE jobs SET state = 1 WHERE mid <= 2")  # as versions before claims.Claims

    s = SqliteStore(str(db_path))
    assert await s.open() == 2
    try:
        assert [j.message.id for j in (await s.claim("a", 10, T0 + 10)).jobs] == ["m0", "m1", "m2"]
    finally:
        await s.close()


async def test_newer_schema_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    s = SqliteStore(str(db_path))
    with pytest.raises(StoreError, match="newer"):
        await s.open()
    await s.close()


async def test_bulk_dlq_operations_chunk(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_CHUNK", 7)
    from dispatcher.message import DlqFilter

    await store.enqueue([new_message(f"m{i:02}", created=T0 + i) for i in range(30)])
    jobs = (await store.claim("p", 100, T0 + 100)).jobs
    await store.complete([dead(j, T0 + k, "x") for k, j in enumerate(jobs)])
    before = store.commits
    assert await store.dlq_replay(DlqFilter(), T0 + 200, interval=1.0) == {"p": 30}
    assert store.commits - before == 5  # ceil(30 / 7) chunks
    claimed = (await store.claim("p", 100, T0 + 229)).jobs
    assert [j.enqueued_at for j in claimed] == [T0 + 200 + k for k in range(30)]
    await store.complete([dead(j, T0 + 300, "x") for j in claimed])
    assert await store.dlq_purge(DlqFilter()) == {"p": 30}
    assert await store.dlq_count(DlqFilter()) == 0
    assert await store.get_message("m00") is None


@pytest.mark.slow
@pytest.mark.allow_blocking
def test_committed_messages_survive_sigkill(db_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from dispatcher.message import Message, NewMessage
        from dispatcher.stores.sqlite import SqliteStore

        async def main():
            s = SqliteStore({str(db_path)!r})
            await s.open()
            batch = [NewMessage(Message(id=f"m{{i}}", tag="t", payload=b"x", created_at=1.0),
                                ("p",)) for i in range(100)]
            await s.enqueue(batch)
            await s.claim("p", 10, 2.0)
            print("committed", flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "committed"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    async def reopen() -> tuple[int, int]:
        s = SqliteStore(str(db_path))
        requeued = await s.open()
        try:
            return requeued, (await s.counts(time.time()))["p"].ready
        finally:
            await s.close()

    assert asyncio.run(reopen()) == (0, 100)


# --- claims and other writes in one write group (the claim books change at once) ---------


async def _same_group(store: SqliteStore, *calls: Any) -> list[Any]:
    """Run `calls` (store coroutines) as ONE write group: hold the writer, queue them in
    order, let go."""
    started, go = threading.Event(), threading.Event()

    def hold(_db: sqlite3.Connection) -> None:
        started.set()
        go.wait(5)

    held = asyncio.ensure_future(on_writer(store, hold))
    while not started.is_set():
        await asyncio.sleep(0.001)
    tasks = []
    for call in calls:
        tasks.append(asyncio.ensure_future(call))
        await asyncio.sleep(0)  # queued in this order
    go.set()
    await held
    return list(await asyncio.gather(*tasks))


def _ids(jobs: Any) -> list[str]:
    return [j.message.id for j in jobs]


async def _four(store: SqliteStore) -> None:
    await store.enqueue([new_message(f"a{i}", created=T0 + i) for i in range(4)])


async def test_a_claim_with_a_clock_behind_a_replay_leaves_no_cursor_past_it(
    store: SqliteStore,
) -> None:
    # The feeder read its clock just before an operator's replay committed.
    await store.enqueue([new_message("x", priority=1)])
    (x,) = (await store.claim("p", 1, T0)).jobs
    await store.complete([dead(x, T0)])
    await store.enqueue([new_message(i) for i in ("a", "b", "c")])
    store._tails.pop("p")  # claims of the file from here
    await store.dlq_replay(DlqFilter(pool="p"), T0 + 10)  # x ready at T0 + 10
    assert _ids((await store.claim("p", 1, T0 + 9)).jobs) == ["a"]
    assert _ids((await store.claim("p", 10, T0 + 11)).jobs) == ["x", "b", "c"]


async def test_a_claim_with_a_clock_behind_a_promotion_leaves_no_cursor_past_it(
    store: SqliteStore,
) -> None:
    # Two claims of the file with clocks a little apart: the later one promotes a
    # scheduled job, which the earlier must not step over; nor once it is released.
    await store.enqueue([new_message("x", priority=1, delay=10)])  # due at T0 + 10
    await store.enqueue([new_message(i) for i in ("a", "b", "c")])
    store._tails.pop("p", None)
    (x,) = (await store.claim("p", 1, T0 + 10)).jobs
    await store.release([x])
    assert _ids((await store.claim("p", 1, T0 + 9)).jobs) == ["a"]  # x not yet due then
    assert _ids((await store.claim("p", 10, T0 + 11)).jobs) == ["x", "b", "c"]


async def test_a_release_and_a_claim_in_one_group(store: SqliteStore) -> None:
    await _four(store)
    first = (await store.claim("p", 2, T0 + 100)).jobs
    _, again = await _same_group(store, store.release(first), store.claim("p", 10, T0 + 100))
    assert _ids(again.jobs) == ["a0", "a1", "a2", "a3"]


async def test_two_claims_in_one_group_share_nothing(store: SqliteStore) -> None:
    await _four(store)
    one, two = await _same_group(
        store, store.claim("p", 2, T0 + 100), store.claim("p", 2, T0 + 100)
    )
    assert (_ids(one.jobs), _ids(two.jobs)) == (["a0", "a1"], ["a2", "a3"])


async def test_a_due_retry_and_a_claim_in_one_group(store: SqliteStore) -> None:
    await _four(store)
    (job,) = (await store.claim("p", 1, T0 + 100)).jobs
    failed = retry(job, T0 + 5, retry_at=T0 + 6, error="x")
    _, again = await _same_group(store, store.complete([failed]), store.claim("p", 10, T0 + 100))
    assert _ids(again.jobs) == ["a1", "a2", "a3", "a0"]  # a0 is due again at T0 + 6


async def test_an_urgent_enqueue_and_a_claim_in_one_group(store: SqliteStore) -> None:
    await _four(store)
    await store.claim("p", 2, T0 + 100)
    urgent = new_message("urgent", created=T0 + 10, priority=5)
    _, claim = await _same_group(store, store.enqueue([urgent]), store.claim("p", 1, T0 + 100))
    assert _ids(claim.jobs) == ["urgent"]


async def test_a_job_released_twice_counts_once(store: SqliteStore) -> None:
    await _four(store)
    (job,) = (await store.claim("p", 1, T0 + 100)).jobs
    await store.release([job, job])
    counts = (await store.counts(T0 + 100))["p"]
    assert (counts.ready, counts.claimed) == (4, 0)


async def test_a_claim_rolled_back_with_its_group_leaves_the_books_as_they_were(
    store: SqliteStore,
) -> None:
    await _four(store)
    # A request that commits inside the group makes the group's own COMMIT fail.
    with contextlib.suppress(StoreError):
        await _same_group(
            store, store.claim("p", 2, T0 + 100), on_writer(store, lambda db: db.execute("COMMIT"))
        )
    assert _ids((await store.claim("p", 10, T0 + 100)).jobs) == ["a0", "a1", "a2", "a3"]


class _HeldCompletion:
    """Makes a real store's completions stop on the writer thread, between changing the
    claim books and committing, until `go` is set; `stale_once` makes the reader's next
    snapshot land before that commit and the look at the books after it."""

    def __init__(self, store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paused = threading.Event()
        self.go = threading.Event()
        self.stale_once = False
        complete, message_rows = sqlite_writes.complete, sqlite_reads.message_rows

        def held_complete(*args: Any) -> Any:
            result = complete(*args)
            self.paused.set()
            assert self.go.wait(10)
            return result

        def stale_message_rows(*args: Any) -> Any:
            rows = message_rows(*args)
            if self.stale_once:
                self.stale_once = False
                commits = store.commits
                self.go.set()
                deadline = time.monotonic() + 10
                while store.commits == commits and time.monotonic() < deadline:
                    time.sleep(0.001)
            return rows

        monkeypatch.setattr(sqlite_writes, "complete", held_complete)
        monkeypatch.setattr(sqlite_reads, "message_rows", stale_message_rows)


@pytest.mark.parametrize("stale", [False, True], ids=["mid-commit", "commit-in-between"])
async def test_a_job_being_completed_reads_in_flight_until_its_outcome_commits(
    db_path: Path, stale: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(str(db_path))
    held = _HeldCompletion(store, monkeypatch)
    await store.open()
    try:
        await store.enqueue([new_message("m")])
        [job] = (await store.claim("p", 10, T0 + 1)).jobs
        done = store.complete([delivered(job, T0 + 2)])
        completing = asyncio.ensure_future(done)
        assert await asyncio.to_thread(held.paused.wait, 10)
        held.stale_once = stale
        status = await store.get_message("m")
        assert status is not None
        expected = State.DELIVERED if stale else State.CLAIMED
        assert status.jobs[0].state == expected  # never QUEUED in between
        held.go.set()
        await completing
        status = await store.get_message("m")
        assert status is not None
        assert status.jobs[0].state == State.DELIVERED
    finally:
        held.go.set()
        await store.close()


def test_reads_and_writes_run_on_a_plain_connection(tmp_path: Path) -> None:
    """No threads: the store's reads and writes are functions of any connection to the file."""
    path = str(tmp_path / "plain.db")
    claims = ClaimBooks(threading.Lock())
    with contextlib.closing(schema.connect(path)) as db:
        db.execute("BEGIN")
        schema.migrate(db, path)
        batch = [new_message("a", created=T0), new_message("b", "p", "q", created=T0 + 5)]
        nothing_queued = lambda pool: 0  # noqa: E731
        assert sqlite_writes.enqueue(db, Delta(), claims, NewRows(batch, 0), nothing_queued) == [
            True,
            True,
        ]
        rows, next_at = sqlite_writes.claim(db, Delta(), claims, {}, "p", 10, T0 + 10)
        assert next_at is None
        jobs = [Job(r[0], "p", sqlite_reads.message(r[3], 0), r[1], r[2]) for r in rows]
        failed = [
            Completion(
                j,
                Attempt(1, T0 + 20 + k, 0.5, Outcome.FAILURE, "Straße"),
                dead=DeadReason.PERMANENT,
            )
            for k, j in enumerate(jobs)
        ]
        sqlite_writes.complete(db, Delta(), claims, outcome_rows(failed))
        db.execute("COMMIT")

        found = sqlite_reads.message_rows(db, "b")
        assert found is not None
        status = sqlite_reads.message_status(found, held=set())
        assert [(j.pool, j.state) for j in status.jobs] == [("p", State.DEAD), ("q", State.QUEUED)]
        # The error filter folds case as Python does (ß is ss), not as SQLite's lower().
        assert sqlite_reads.dlq_count(db, DlqFilter(error="STRASSE")) == 2
        page, cursor = sqlite_reads.dlq_list(db, DlqFilter(), 1, None)
        assert [e.message.id for e in page] == ["b"]
        assert cursor == format_dlq_cursor(T0 + 21.5, jobs[1].key)
        page, cursor = sqlite_reads.dlq_list(db, DlqFilter(), 1, cursor)
        assert ([e.message.id for e in page], cursor) == (["a"], None)
        assert sqlite_reads.expiry_range(db, T0 + 1) == (1, 1)  # only "a" was created before


class Window:
    """A pool's side of Store.hand_off, as Pool implements it: room, then what came."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.offers: list[int] = []
        self.received: list[tuple[list[Job], int]] = []

    def offer(self, most: int) -> int:
        n = min(most, self.room)
        self.offers.append(n)
        return n

    def receive(self, jobs: list[Job], offered: int) -> None:
        self.received.append((jobs, offered))

    @property
    def ids(self) -> list[str]:
        return [j.message.id for jobs, _ in self.received for j in jobs]


async def test_new_jobs_are_handed_to_a_pool_with_room(store: SqliteStore) -> None:
    window = Window(room=2)
    store.hand_off("p", window)
    assert await store.enqueue([new_message(i) for i in ("a", "b", "c")]) == [True] * 3
    # The first two, claimed, with their Message objects (nothing read back); the third ready.
    assert window.ids == ["a", "b"]
    assert window.received[0][1] == 2
    handed = window.received[0][0]
    assert all(j.attempts == 0 and j.pool == "p" and j.enqueued_at == T0 for j in handed)
    assert [j.message.id for j in store._tails["p"].jobs] == ["c"]  # kept for its claim
    assert [j.state for j in (await store.get_message("a")).jobs] == [State.CLAIMED]  # type: ignore[union-attr]
    counts = (await store.counts(T0))["p"]
    assert (counts.ready, counts.claimed) == (1, 2)
    claim = await store.claim("p", 10, T0 + 1)
    assert [j.message.id for j in claim.jobs] == ["c"]
    await store.complete([delivered(j, T0 + 2) for j in handed])
    assert [j.state for j in (await store.get_message("a")).jobs] == [State.DELIVERED]  # type: ignore[union-attr]
    assert (await store.counts(T0))["p"].claimed == 1


async def test_no_handoff_while_older_jobs_wait_or_priorities_differ(store: SqliteStore) -> None:
    window = Window(room=0)
    store.hand_off("p", window)
    await store.enqueue([new_message("old")])
    window.room = 10
    await store.enqueue([new_message("new")])  # "old" is queued: it is claimed first
    assert [j.message.id for j in store._tails["p"].jobs] == ["old", "new"]
    assert window.ids == []
    assert window.received[-1] == ([], 1)
    claim = await store.claim("p", 10, T0 + 1)
    assert [j.message.id for j in claim.jobs] == ["old", "new"]
    # Mixed priorities: the first jobs of the batch need not be first in claim order.
    await store.enqueue([new_message("low"), new_message("high", priority=5)])
    assert window.ids == []
    claim = await store.claim("p", 10, T0 + 1)
    assert [j.message.id for j in claim.jobs] == ["high", "low"]
    # A delayed message is scheduled, never handed over; an empty queue hands over again.
    await store.complete([delivered(j, T0 + 2) for j in claim.jobs])
    await store.enqueue([new_message("later", delay=60), new_message("now")])
    assert window.ids == ["now"]


async def test_retries_scheduled_for_later_do_not_stop_the_handoff(store: SqliteStore) -> None:
    # A flaky receiver's pool has a retry pending: new jobs sort ahead of it.
    window = Window(room=10)
    store.hand_off("p", window)
    await store.enqueue([new_message("flaky")])
    ((flaky,), _) = window.received[-1]
    await store.complete([retry(flaky, T0 + 1, retry_at=T0 + 60)])
    await store.enqueue([new_message("now1", created=T0 + 1)])
    assert window.ids == ["flaky", "now1"]
    assert store._next_at["p"] == T0 + 60  # what the tail's claims go by
    commits = store.commits
    claim = await store.claim("p", 10, T0 + 3)  # the tail: nothing ready, the retry not due
    assert (claim.jobs, claim.next_at) == ([], T0 + 60)
    assert store.commits == commits
    # Once it is due, the retry comes first: nothing is handed over past it, not even a
    # job of the same time, nor one of a batch whose last job is later than the retry.
    await store.enqueue([new_message("now2", created=T0 + 60)])
    await store.enqueue([new_message("now3", created=T0 + 2), new_message("now4", created=T0 + 61)])
    assert window.ids == ["flaky", "now1"]
    claim = await store.claim("p", 10, T0 + 61)
    assert _ids(claim.jobs) == ["now3", "flaky", "now2", "now4"]


async def test_the_writer_looks_past_a_few_scheduled_jobs_only(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writes, "_FEW", 2)
    window = Window(room=10)
    store.hand_off("p", window)
    await store.enqueue([new_message(f"s{i}", delay=60) for i in range(2)])
    await store.enqueue([new_message("past-two", created=T0 + 1)])
    assert window.ids == ["past-two"]
    await store.enqueue([new_message("s2", created=T0 + 1, delay=60)])
    await store.enqueue([new_message("past-three", created=T0 + 2)])  # not looked at
    assert window.ids == ["past-two"]
    claim = await store.claim("p", 10, T0 + 100)
    assert _ids(claim.jobs) == ["past-three", "s0", "s1", "s2"]


async def test_a_tail_opened_past_a_retry_knows_when_the_retry_is_due(store: SqliteStore) -> None:
    await store.claim("p", 10, T0)  # the file's claim: nothing scheduled
    await store.enqueue([new_message("a")])
    (a,) = (await store.claim("p", 10, T0 + 1)).jobs
    await store.complete([retry(a, T0 + 2, retry_at=T0 + 5)])
    assert store._next_at["p"] is None  # what the last claim of the file saw
    await store.enqueue([new_message("b", created=T0 + 3)])  # only the retry queued: later
    assert store._next_at["p"] == T0 + 5
    assert _ids((await store.claim("p", 10, T0 + 4)).jobs) == ["b"]
    # Were the tail to go by the old schedule, it would answer "nothing" for ever.
    assert _ids((await store.claim("p", 10, T0 + 6)).jobs) == ["a"]


async def test_handed_jobs_go_back_on_release_and_after_a_crash(
    store: SqliteStore, db_path: Path
) -> None:
    window = Window(room=5)
    store.hand_off("p", window)
    await store.enqueue([new_message("a"), new_message("b")])
    a, _b = window.received[0][0]
    await store.release([a])
    assert [j.state for j in (await store.get_message("a")).jobs] == [State.QUEUED]  # type: ignore[union-attr]
    claim = await store.claim("p", 10, T0 + 1)
    assert [j.message.id for j in claim.jobs] == ["a"]
    # "b" is still held claimed when the process goes: the next open requeues it.
    await store.close()
    reopened = SqliteStore(str(db_path))
    assert await reopened.open() == 1
    try:
        claim = await reopened.claim("p", 10, T0 + 1)
        assert sorted(j.message.id for j in claim.jobs) == ["a", "b"]
    finally:
        await reopened.close()


async def test_a_refused_enqueue_hands_nothing_over(store: SqliteStore) -> None:
    window = Window(room=5)
    store.hand_off("p", window)
    await store.enqueue([NewMessage(message("x", payload=b"1"), ("p",), b"d0", T0 + 60)])
    keyed = [
        NewMessage(message("y"), ("p",), b"d1", T0 + 60),
        NewMessage(message("x", payload=b"2"), ("p",), b"d2", T0 + 60),
    ]
    with pytest.raises(IdConflict):
        await store.enqueue(keyed)
    assert window.received[-1] == ([], 2)  # the room it offered is given back
    # Duplicates are not handed over either: only what was written.
    dup = [NewMessage(message("z"), ("p",), b"d3", T0 + 60)] * 2
    assert await store.enqueue_each(dup) == [True, False]
    assert window.ids[-1:] == ["z"]
    assert len(window.received[-1][0]) == 1


async def test_plain_and_other_messages_in_one_batch_keep_every_field(store: SqliteStore) -> None:
    # A batch of plain messages binds only what differs (writes._INSERT_PLAIN); one with
    # headers, a trace, another priority or a delay makes the whole batch whole rows.
    plain = [new_message("p1"), new_message("p2", tag="other.tag", payload=b"[1]")]
    assert await store.enqueue(plain) == [True, True]
    mixed = [
        new_message("m1"),
        new_message("m2", headers={"k": "v"}, trace="00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
        new_message("m3", priority=3, delay=5),
    ]
    assert await store.enqueue(mixed) == [True, True, True]
    for new in plain + mixed:
        status = await store.get_message(new.message.id)
        assert status is not None
        assert status.message == new.message


async def test_a_first_attempt_success_is_kept_as_two_numbers_and_read_back_whole(
    store: SqliteStore,
) -> None:
    await store.enqueue([new_message("a"), new_message("b")])
    a, b = (await store.claim("p", 2, T0 + 1)).jobs
    started, took = 1765000000.123457, 0.000123456789  # a real clock's digits
    first = Attempt(1, started, took, Outcome.SUCCESS)
    await store.complete([Completion(a, first), retry(b, T0 + 2, retry_at=T0 + 3)])
    status = await store.get_message("a")
    assert status is not None
    assert status.jobs[0].attempts == [first]
    assert status.jobs[0].finished_at == started + took
    row = await on_writer(
        store,
        lambda db: db.execute("SELECT attempt_log FROM jobs WHERE jid = ?", (a.key,)).fetchone(),
    )
    assert row == (None,)  # no log written
    b2 = (await store.claim("p", 1, T0 + 3)).jobs[0]
    await store.complete([delivered(b2, T0 + 4)])  # a later success keeps the whole log
    status = await store.get_message("b")
    assert status is not None
    assert [x.outcome for x in status.jobs[0].attempts] == [Outcome.FAILURE, Outcome.SUCCESS]


async def test_claims_take_new_messages_from_memory_and_read_the_others(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_TAIL_LIMIT", 0)  # claims of the file alone
    batch = [new_message(i, payload=f'{{"n": "{i}"}}'.encode()) for i in ("a", "b")]
    await store.enqueue(batch)
    first = (await store.claim("p", 1, T0 + 1)).jobs
    assert first[0].message is batch[0].message  # not read back
    await store.release(first)
    again = (await store.claim("p", 10, T0 + 1)).jobs
    assert [j.message for j in again] == [batch[0].message, batch[1].message]
    assert again[0].message is not batch[0].message  # claimed before: read from the file
    assert again[1].message is batch[1].message
    assert store._fresh == {}
    # Kept only for jobs a claim will come for, and at most _FRESH_LIMIT of them.
    monkeypatch.setattr(sqlite_module, "_FRESH_LIMIT", 3)
    keyed = NewMessage(message("k"), ("p",), b"d", T0 + 60)
    await store.enqueue([keyed])
    answers = await store.enqueue_each([keyed, new_message("x"), new_message("y")])
    assert answers == [False, True, True]
    assert sorted(m.id for m in store._fresh.values()) == ["k", "x"]
    claimed = (await store.claim("p", 10, T0 + 1)).jobs
    assert [j.message.id for j in claimed] == ["k", "x", "y"]
    assert claimed[2].message == message("y")


async def test_a_tail_serves_claims_without_the_writer_until_something_comes_ahead(
    store: SqliteStore,
) -> None:
    await store.claim("p", 10, T0)  # the pool's first claim: nothing, no schedule
    batch = [new_message(i) for i in ("a", "b", "c")]
    await store.enqueue(batch)
    commits = store.commits
    claim = await store.claim("p", 2, T0 + 1)
    assert [j.message for j in claim.jobs] == [batch[0].message, batch[1].message]
    assert claim.jobs[0].message is batch[0].message
    assert claim.next_at is None
    assert store.commits == commits  # the writer was not asked
    counts = (await store.counts(T0 + 1))["p"]
    assert (counts.ready, counts.claimed) == (1, 2)
    assert [j.state for j in (await store.get_message("a")).jobs] == [State.CLAIMED]  # type: ignore[union-attr]
    # A message of higher priority sorts ahead: the tail is dropped, the file orders them.
    await store.enqueue([new_message("urgent", priority=5)])
    assert "p" not in store._tails
    claim = await store.claim("p", 10, T0 + 1)
    assert [j.message.id for j in claim.jobs] == ["urgent", "c"]
    # Empty again: the next enqueue begins a tail; a release drops it (ready ahead of it).
    await store.complete([delivered(j, T0 + 2) for j in claim.jobs])
    await store.enqueue([new_message("e")])
    assert [j.message.id for j in store._tails["p"].jobs] == ["e"]
    await store.release((await store.claim("p", 1, T0 + 3)).jobs)
    assert "p" not in store._tails
    assert [j.message.id for j in (await store.claim("p", 10, T0 + 3)).jobs] == ["e"]


async def test_a_scheduled_job_due_sends_the_claim_to_the_file(store: SqliteStore) -> None:
    await store.claim("p", 10, T0)
    await store.enqueue([new_message("later", delay=5)])  # scheduled: next_at T0 + 5
    await store.enqueue([new_message("now", created=T0 + 1)])
    assert [j.message.id for j in store._tails["p"].jobs] == ["now"]  # every ready one
    commits = store.commits
    claim = await store.claim("p", 10, T0 + 2)
    assert [j.message.id for j in claim.jobs] == ["now"]
    assert claim.next_at == T0 + 5
    assert store.commits == commits
    claim = await store.claim("p", 10, T0 + 6)  # "later" is due: the file promotes it
    assert [j.message.id for j in claim.jobs] == ["later"]
    assert store.commits > commits


async def test_a_retry_makes_the_tail_stale(store: SqliteStore) -> None:
    await store.claim("p", 10, T0)
    await store.enqueue([new_message("a")])
    (a,) = (await store.claim("p", 10, T0 + 1)).jobs  # from the tail
    await store.enqueue([new_message("b")])  # nothing queued: a new tail
    assert [j.message.id for j in store._tails["p"].jobs] == ["b"]
    await store.complete([retry(a, T0 + 2, retry_at=T0 + 5)])
    # As a claim of the file that read the schedule before the retry was written would
    # leave it: the store's next_at cannot be trusted for the retry.
    store._next_at["p"] = None
    # The tail knows nothing of the retry: the claims go to the file, which promotes it.
    claim = await store.claim("p", 10, T0 + 6)
    assert [j.message.id for j in claim.jobs] == ["b", "a"]


async def test_a_closed_tail_is_dropped_for_a_message_that_sorts_ahead(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_TAIL_LIMIT", 1)
    await store.claim("p", 10, T0)
    await store.enqueue([new_message("a"), new_message("b")])
    assert not store._tails["p"].open
    await store.enqueue([new_message("urgent", priority=5)])
    assert "p" not in store._tails
    claim = await store.claim("p", 10, T0 + 1)
    assert [j.message.id for j in claim.jobs] == ["urgent", "a", "b"]


async def test_jobs_taken_from_the_tail_come_back_when_the_file_fails_the_rest(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_TAIL_LIMIT", 1)
    await store.claim("p", 10, T0)
    await store.enqueue([new_message("a"), new_message("b")])  # "a" in a closed tail

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("the disk is full")

    gen = store._claims["p"].ready_gen
    with monkeypatch.context() as m:
        m.setattr(store, "_write_volatile", failing)
        with pytest.raises(StoreError):
            await store.claim("p", 10, T0 + 1)  # "a" from the tail, then the file fails
    # Ready again: a tail begun meanwhile would not hold "a", so it must not answer claims.
    assert store._claims["p"].ready_gen > gen
    counts = (await store.counts(T0 + 1))["p"]
    assert (counts.ready, counts.claimed) == (2, 0)
    claim = await store.claim("p", 10, T0 + 1)
    assert [j.message.id for j in claim.jobs] == ["a", "b"]
