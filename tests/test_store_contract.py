"""One contract for every Store backend: the same tests, the same exact answers.

A new backend joins by adding its name to BACKENDS and a branch to `Harness.make` (redis:
skip on a laptop without a server via `require_service`, fail in CI).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from dispatcher.errors import IdConflict, StoreError
from dispatcher.message import (
    Attempt,
    AuditEntry,
    Completion,
    DeadReason,
    DlqFilter,
    Job,
    NewMessage,
    Outcome,
    PoolCounts,
    State,
)
from dispatcher.stores.base import Store, format_dlq_cursor, parse_dlq_cursor
from dispatcher.stores.memory import MemoryStore
from dispatcher.stores.redis import RedisStore
from dispatcher.stores.sqlite import SqliteStore

from .factories import T0, dead, delivered, message, new_message, retry
from .kit.redis import URL as REDIS_URL
from .kit.redis import drop_prefix, require_redis, unique_prefix

BACKENDS = ["memory", "sqlite", "redis"]

LATER = T0 + 1_000_000  # a `now` after everything the tests schedule


class Harness:
    """Makes stores of one backend and reopens them as a restarted process would."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.path = tmp_path / "data" / "dispatcher.db"
        self.prefix = unique_prefix()
        self.opened: list[Store] = []

    def make(self) -> Store:
        if self.kind == "memory":
            return MemoryStore()
        if self.kind == "sqlite":
            return SqliteStore(str(self.path))
        if self.kind == "redis":
            return RedisStore(REDIS_URL, prefix=self.prefix, consumer="contract")
        raise AssertionError(self.kind)

    async def open(self, store: Store | None = None) -> tuple[Store, int]:
        store = store or self.make()
        requeued = await store.open()
        self.opened.append(store)
        return store, requeued

    async def reopen(self, store: Store) -> tuple[Store, int]:
        """Close `store` and open the same storage again. The memory store has no storage
        but itself, so it reopens the same object."""
        await store.close()
        return await self.open(store if isinstance(store, MemoryStore) else None)


@pytest.fixture(params=BACKENDS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    if request.param == "redis":
        await require_redis()
    h = Harness(request.param, tmp_path)
    yield h
    for store in h.opened:
        await store.close()
    if request.param == "redis":
        await drop_prefix(h.prefix)


@pytest.fixture
async def store(harness: Harness) -> Store:
    s, requeued = await harness.open()
    assert requeued == 0
    return s


# --- helpers -----------------------------------------------------------------------------


def ids(jobs: list[Job]) -> list[str]:
    return [j.message.id for j in jobs]


async def claim_all(store: Store, pool: str = "p", now: float = LATER) -> list[Job]:
    return (await store.claim(pool, 10_000, now)).jobs


async def kill(store: Store, specs: list[tuple[str, str, str, str, float]]) -> None:
    """Dead-letter one job per spec (id, pool, tag, error, failed_at): enqueue, claim, fail.
    failed_at = started_at + 0.5 (the attempt's duration)."""
    await store.enqueue([new_message(i, pool, tag=tag) for i, pool, tag, _, _ in specs])
    jobs = {
        (j.message.id, j.pool): j for p in {s[1] for s in specs} for j in await claim_all(store, p)
    }
    await store.complete(
        [dead(jobs[(i, pool)], at - 0.5, error) for i, pool, _, error, at in specs]
    )


# --- enqueue and claim -------------------------------------------------------------------


async def test_round_trip_keeps_bytes_headers_and_trace(store: Store) -> None:
    payload = bytes(range(256)) + b"\x00 not utf-8 \xff"
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    m = message("m1", payload=payload, headers={"ce-type": "signup", "x": "ü"}, trace=trace)
    assert await store.enqueue([new_message(m, "email")]) == [True]

    c = await store.claim("email", 10, T0)
    assert len(c.jobs) == 1
    job = c.jobs[0]
    assert job.message == m
    assert type(job.message.payload) is bytes
    assert job.pool == "email"
    assert job.attempts == 0
    assert job.enqueued_at == T0
    assert c.next_at is None

    status = await store.get_message("m1")
    assert status is not None
    assert status.message == m
    assert [(j.pool, j.state, j.attempts, j.history) for j in status.jobs] == [
        ("email", State.CLAIMED, [], [])
    ]
    assert await store.get_message("nope") is None


async def test_returned_values_are_copies(store: Store) -> None:
    await store.enqueue([new_message("m1", headers={"a": "1"})])
    job = (await store.claim("p", 1, T0)).jobs[0]
    job.message.headers["a"] = "changed"
    status = await store.get_message("m1")
    assert status is not None
    assert status.message.headers == {"a": "1"}
    status.message.headers["b"] = "2"
    again = await store.get_message("m1")
    assert again is not None
    assert again.message.headers == {"a": "1"}


async def test_duplicate_ids_are_refused_across_and_within_batches(store: Store) -> None:
    first = message("a", payload=b"first")
    assert await store.enqueue(
        [new_message(first), new_message("b"), new_message("a", payload=b"again")]
    ) == [
        True,
        True,
        False,
    ]
    assert await store.enqueue([new_message("a"), new_message("c"), new_message("c")]) == [
        False,
        True,
        False,
    ]
    jobs = await claim_all(store)
    assert sorted(ids(jobs)) == ["a", "b", "c"]
    assert next(j for j in jobs if j.message.id == "a").message.payload == b"first"
    assert await store.enqueue([]) == []


def keyed(m_id: str, payload: bytes = b"{}", until: float = T0 + 100) -> NewMessage:
    """A message with a producer id, remembered until `until`; its digest is its payload."""
    return NewMessage(message(m_id, payload=payload), ("p",), payload, until)


async def test_a_reused_id_with_other_content_conflicts_and_nothing_is_stored(
    store: Store,
) -> None:
    assert await store.enqueue([keyed("a", b"1")]) == [True]
    with pytest.raises(IdConflict) as held:
        await store.enqueue([keyed("b", b"1"), keyed("a", b"2")])
    assert (held.value.message_id, held.value.index) == ("a", 1)
    with pytest.raises(IdConflict) as twins:
        await store.enqueue([keyed("c", b"1"), keyed("c", b"2")])
    assert (twins.value.message_id, twins.value.index) == ("c", 1)
    # The first item that conflicts is named, whether with the store or with a later twin.
    with pytest.raises(IdConflict) as first:
        await store.enqueue([keyed("a", b"2"), keyed("a", b"1")])
    assert (first.value.message_id, first.value.index) == ("a", 0)
    assert await store.get_message("b") is None
    assert await store.get_message("c") is None
    assert await store.enqueue([keyed("a", b"1")]) == [False]
    assert ids(await claim_all(store)) == ["a"]


@pytest.mark.parametrize("implementation", ["backend", "default"])
async def test_enqueue_each_answers_every_item_as_if_alone(
    store: Store, implementation: str
) -> None:
    """Store.enqueue_each, the backend's own and the interface's default (which enqueues
    the items one by one once the batch met a conflict): the same answers, the same rows."""
    enqueue_each = (
        store.enqueue_each
        if implementation == "backend"
        else (lambda batch: Store.enqueue_each(store, batch))
    )
    await store.enqueue([keyed("old", b"1"), new_message("plain")])
    answers = await enqueue_each(
        [
            keyed("new", b"1"),
            new_message("anon"),
            keyed("old", b"1"),  # a duplicate of an earlier message
            keyed("old", b"2"),  # a conflict with it
            keyed("twin", b"x"),
            keyed("twin", b"x"),  # a duplicate within the batch
            keyed("twin", b"y"),  # a conflict within the batch
            new_message("plain"),  # an id the store holds, without a digest: a duplicate
            keyed("late", b"2"),
        ]
    )
    assert answers == [
        True,
        True,
        False,
        Conflict("old", 3),
        True,
        False,
        Conflict("twin", 6),
        False,
        True,
    ]
    jobs = {j.message.id: j for j in await claim_all(store)}
    assert sorted(jobs) == ["anon", "late", "new", "old", "plain", "twin"]
    assert (jobs["old"].message.payload, jobs["twin"].message.payload) == (b"1", b"x")
    # What was remembered is what was stored: the conflicts left no trace.
    assert await enqueue_each([keyed("twin", b"x"), keyed("old", b"2"), keyed("fresh")]) == [
        False,
        Conflict("old", 1),
        True,
    ]
    # A conflicting item never stands for its id, even first in the batch.
    assert await enqueue_each([keyed("new", b"2"), keyed("new", b"1")]) == [
        Conflict("new", 0),
        False,
    ]
    assert await enqueue_each([]) == []


class Conflict:
    """Equal to an IdConflict of this id at this index."""

    def __init__(self, message_id: str, index: int) -> None:
        self.message_id = message_id
        self.index = index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdConflict) and (other.message_id, other.index) == (
            self.message_id,
            self.index,
        )

    def __repr__(self) -> str:
        return f"IdConflict({self.message_id!r}, {self.index})"


async def test_fan_out_makes_independent_jobs(store: Store) -> None:
    await store.enqueue([new_message("m", "email", "analytics", "email")])  # repeated pool: one job
    email = await claim_all(store, "email")
    assert ids(email) == ["m"]
    await store.complete([dead(email[0], T0 + 1, "nope")])

    analytics = await claim_all(store, "analytics")
    assert ids(analytics) == ["m"]
    assert analytics[0].attempts == 0
    await store.complete([delivered(analytics[0], T0 + 2)])

    status = await store.get_message("m")
    assert status is not None
    assert [(j.pool, j.state, len(j.attempts)) for j in status.jobs] == [
        ("email", State.DEAD, 1),
        ("analytics", State.DELIVERED, 1),
    ]
    assert status.jobs[1].finished_at == T0 + 2.5


async def test_higher_priority_first_then_oldest(store: Store) -> None:
    prios = {"a": 0, "b": 5, "c": 1, "d": 5, "e": 0, "f": -1}
    await store.enqueue(
        [new_message(i, priority=p, created=T0 + k) for k, (i, p) in enumerate(prios.items())]
    )
    # One message created earlier but enqueued last still counts as older.
    await store.enqueue([new_message("g", created=T0 - 1)])
    assert ids(await claim_all(store)) == ["b", "d", "c", "g", "a", "e", "f"]


async def test_claim_limit_and_fifo(store: Store) -> None:
    await store.enqueue([new_message(f"m{i}", created=T0 + i) for i in range(5)])
    assert ids((await store.claim("p", 2, LATER)).jobs) == ["m0", "m1"]
    assert ids((await store.claim("p", 2, LATER)).jobs) == ["m2", "m3"]
    assert ids((await store.claim("p", 2, LATER)).jobs) == ["m4"]
    assert (await store.claim("p", 2, LATER)).jobs == []
    assert (await store.claim("other", 2, LATER)).jobs == []


async def test_delayed_message_waits_and_reports_next_at(store: Store) -> None:
    await store.enqueue([new_message("late", delay=10), new_message("later", delay=20)])
    c = await store.claim("p", 10, T0 + 5)
    assert c.jobs == []
    assert c.next_at == T0 + 10
    counts = await store.counts(T0 + 5)
    assert counts == {"p": PoolCounts(ready=0, scheduled=2, claimed=0, dead=0, oldest_at=T0)}

    c = await store.claim("p", 10, T0 + 10)
    assert ids(c.jobs) == ["late"]
    assert c.jobs[0].enqueued_at == T0 + 10
    assert c.jobs[0].message.available_at == T0 + 10
    assert c.next_at == T0 + 20

    c = await store.claim("p", 10, T0 + 30)
    assert ids(c.jobs) == ["later"]
    assert c.next_at is None


async def test_ready_jobs_not_stuck_behind_scheduled_ones(store: Store) -> None:
    await store.enqueue([new_message(f"s{i}", priority=9, delay=100) for i in range(50)])
    await store.enqueue([new_message("ready", created=T0 + 1)])
    c = await store.claim("p", 10, T0 + 2)
    assert ids(c.jobs) == ["ready"]
    assert c.next_at == T0 + 100


# --- complete and release ----------------------------------------------------------------


async def test_retry_then_dead_records_every_attempt(store: Store) -> None:
    await store.enqueue([new_message("m")])
    job = (await store.claim("p", 1, T0)).jobs[0]
    await store.complete([retry(job, T0 + 1, retry_at=T0 + 30, error="HTTP 503")])

    c = await store.claim("p", 1, T0 + 29)
    assert c.jobs == []
    assert c.next_at == T0 + 30
    status = await store.get_message("m")
    assert status is not None
    assert status.jobs[0].state == State.QUEUED
    assert status.jobs[0].available_at == T0 + 30

    job = (await store.claim("p", 1, T0 + 30)).jobs[0]
    assert job.attempts == 1
    assert job.enqueued_at == T0 + 30
    await store.complete(
        [
            Completion(
                job,
                Attempt(2, T0 + 31, 10.0, Outcome.TIMEOUT, "timed out"),
                dead=DeadReason.MAX_ATTEMPTS,
            )
        ]
    )
    status = await store.get_message("m")
    assert status is not None
    js = status.jobs[0]
    assert js.state == State.DEAD
    assert js.dead_reason == DeadReason.MAX_ATTEMPTS
    assert js.finished_at == T0 + 41
    assert js.attempts == [
        Attempt(1, T0 + 1, 0.5, Outcome.FAILURE, "HTTP 503"),
        Attempt(2, T0 + 31, 10.0, Outcome.TIMEOUT, "timed out"),
    ]
    assert js.history == []
    (entry,), _ = await store.dlq_list(DlqFilter(), 10)
    assert (entry.pool, entry.attempts, entry.error, entry.failed_at, entry.reason) == (
        "p",
        2,
        "timed out",
        T0 + 41,
        DeadReason.MAX_ATTEMPTS,
    )
    assert entry.message.id == "m"


async def test_complete_a_batch_of_mixed_fates(store: Store) -> None:
    await store.enqueue([new_message(f"m{i}", created=T0 + i) for i in range(4)])
    a, b, c, d = await claim_all(store, now=T0 + 10)
    await store.complete(
        [delivered(a, T0 + 20), retry(b, T0 + 20, T0 + 40), dead(c, T0 + 20), delivered(d, T0 + 21)]
    )
    assert await store.counts(T0 + 30) == {
        "p": PoolCounts(ready=0, scheduled=1, claimed=0, dead=1, oldest_at=T0 + 1)
    }
    states = {}
    for i in range(4):
        st = await store.get_message(f"m{i}")
        assert st is not None
        states[i] = (st.jobs[0].state, st.jobs[0].finished_at, [x.n for x in st.jobs[0].attempts])
    assert states == {
        0: (State.DELIVERED, T0 + 20.5, [1]),
        1: (State.QUEUED, None, [1]),
        2: (State.DEAD, T0 + 20.5, [1]),
        3: (State.DELIVERED, T0 + 21.5, [1]),
    }


async def test_release_returns_jobs_untouched(store: Store) -> None:
    await store.enqueue([new_message("a", created=T0), new_message("b", created=T0 + 1)])
    jobs = await claim_all(store)
    assert (await store.counts(LATER))["p"].claimed == 2
    await store.release(jobs)
    status = await store.get_message("a")
    assert status is not None
    assert (status.jobs[0].state, status.jobs[0].attempts) == (State.QUEUED, [])
    again = await claim_all(store)
    assert ids(again) == ["a", "b"]
    assert [(j.attempts, j.enqueued_at) for j in again] == [(0, T0), (0, T0 + 1)]


async def test_claim_order_holds_across_claims_and_late_arrivals(store: Store) -> None:
    """Claims resume where the last one stopped, yet never skip a job that arrives ahead of
    that point: higher priority, an earlier time (a clock set back), a release, a promotion
    of a due retry, or a replay."""
    await store.enqueue([new_message(f"a{i}", created=T0 + i) for i in range(4)])
    first = (await store.claim("p", 2, LATER)).jobs
    assert ids(first) == ["a0", "a1"]
    await store.enqueue([new_message("urgent", created=T0 + 10, priority=5)])
    await store.enqueue([new_message("early", created=T0 - 10)])
    assert ids((await store.claim("p", 1, LATER)).jobs) == ["urgent"]
    assert ids((await store.claim("p", 1, LATER)).jobs) == ["early"]
    assert ids((await store.claim("p", 1, LATER)).jobs) == ["a2"]
    await store.release([first[1]])  # a1 goes back, behind the last claim
    assert ids((await store.claim("p", 1, LATER)).jobs) == ["a1"]
    await store.complete([retry(first[0], T0 + 20, T0 + 0.5)])  # due again at once
    again = (await store.claim("p", 5, LATER)).jobs
    assert ids(again) == ["a0", "a3"]
    await store.complete([dead(again[0], T0 + 30)])
    assert await store.dlq_replay(DlqFilter(), T0 + 0.2) == {"p": 1}
    assert ids((await store.claim("p", 5, LATER)).jobs) == ["a0"]
    assert ids((await store.claim("p", 5, LATER)).jobs) == []


async def test_a_message_without_a_pool_is_refused_whole(store: Store) -> None:
    with pytest.raises(ValueError, match="no pool"):
        await store.enqueue([new_message("fine"), NewMessage(message("nowhere"), ())])
    assert await store.get_message("fine") is None
    assert await store.get_message("nowhere") is None


async def test_claims_walk_jobs_of_one_instant_in_order(store: Store) -> None:
    # A batch shares one created_at: the claim cursor must move on within it by job.
    await store.enqueue([new_message(f"m{i}", created=T0) for i in range(10)])
    await store.enqueue([new_message("later", created=T0 + 1), new_message("low", priority=-1)])
    got = [ids((await store.claim("p", 3, LATER)).jobs) for _ in range(5)]
    assert got == [
        ["m0", "m1", "m2"],
        ["m3", "m4", "m5"],
        ["m6", "m7", "m8"],
        ["m9", "later", "low"],
        [],
    ]


async def test_a_claim_made_before_a_job_is_due_does_not_pass_it_by(store: Store) -> None:
    # A ready job can be due after a claim's `now` (a producer clock ahead of ours); a
    # claim that moves on to lower priorities meanwhile must still find it later.
    await store.enqueue([new_message("low", created=T0, priority=-1)])
    await store.enqueue([new_message("ahead", created=T0 + 10)])
    assert ids((await store.claim("p", 10, T0 + 5)).jobs) == ["low"]
    assert ids((await store.claim("p", 10, T0 + 20)).jobs) == ["ahead"]


async def test_a_released_job_cannot_be_completed(store: Store) -> None:
    await store.enqueue([new_message("m")])
    (job,) = (await store.claim("p", 1, LATER)).jobs
    await store.release([job])
    await store.complete([delivered(job, T0 + 1)])  # stale: the job went back
    status = await store.get_message("m")
    assert status is not None
    assert status.jobs[0].state == State.QUEUED
    assert ids((await store.claim("p", 1, LATER)).jobs) == ["m"]


async def test_claimed_jobs_are_queued_again_on_reopen(harness: Harness, store: Store) -> None:
    await store.enqueue([new_message(f"m{i}", created=T0 + i) for i in range(3)])
    first = (await store.claim("p", 2, LATER)).jobs
    await store.complete([retry(first[0], T0 + 5, T0 + 6)])  # m0: queued again, attempt 1
    assert ids((await store.claim("p", 5, LATER)).jobs) == ["m2", "m0"]  # m1 still claimed
    # The process "dies" with m0, m1 and m2 claimed.
    store, requeued = await harness.reopen(store)
    # SQLite keeps claims in the writer's memory, not on disk (see sqlite.claims), so a
    # restart finds nothing marked claimed: the jobs simply are ready.
    assert requeued == (0 if harness.kind == "sqlite" else 3)
    jobs = await claim_all(store)
    assert sorted((j.message.id, j.attempts) for j in jobs) == [("m0", 1), ("m1", 0), ("m2", 0)]


# --- counts ------------------------------------------------------------------------------


async def test_counts(store: Store) -> None:
    assert await store.counts(T0) == {}
    await store.enqueue(
        [
            new_message("r1", "a", created=T0 + 3),
            new_message("r2", "a", created=T0 + 4),
            new_message("s1", "a", created=T0 + 1, delay=100),
            new_message("c1", "b", created=T0 + 2),
            new_message("d1", "b", created=T0),
            new_message("ok", "c", created=T0 - 10),
        ]
    )
    b_jobs = await claim_all(store, "b", T0 + 5)
    await store.complete([dead(next(j for j in b_jobs if j.message.id == "d1"), T0 + 5)])
    await store.complete([delivered(j, T0 + 5) for j in await claim_all(store, "c", T0 + 5)])

    assert await store.counts(T0 + 50) == {
        "a": PoolCounts(ready=2, scheduled=1, claimed=0, dead=0, oldest_at=T0 + 1),
        "b": PoolCounts(ready=0, scheduled=0, claimed=1, dead=1, oldest_at=T0 + 2),
    }
    # At T0 + 101 the scheduled job is due: ready, though nobody claimed it yet.
    assert (await store.counts(T0 + 101))["a"] == PoolCounts(
        ready=3, scheduled=0, claimed=0, dead=0, oldest_at=T0 + 1
    )


# --- the dead-letter queue ---------------------------------------------------------------

SPECS = [
    # id, pool, tag, error, failed_at
    ("m1", "email", "user.signup", "HTTP 500 Internal Server Error", T0 + 10),
    ("m2", "email", "orders.paid", "connection refused", T0 + 20),
    ("m3", "sms", "user.signup", "http 404 not found", T0 + 30),
    ("m4", "sms", "orders.paid", "Timeout after 10s", T0 + 40),
    ("m5", "email", "user.signup", None, T0 + 50),
]


async def dlq_ids(store: Store, selector: DlqFilter) -> list[tuple[str, str]]:
    entries, cursor = await store.dlq_list(selector, 100)
    assert cursor is None
    assert await store.dlq_count(selector) == len(entries)
    return [(e.message.id, e.pool) for e in entries]


async def test_dlq_filters(store: Store) -> None:
    await kill(store, [(i, p, t, e or "", at) for i, p, t, e, at in SPECS[:4]])
    # m5's last attempt failed without an error text.
    await store.enqueue([new_message("m5", "email")])
    (j5,) = await claim_all(store, "email")
    await store.complete(
        [Completion(j5, Attempt(1, T0 + 49.5, 0.5, Outcome.TIMEOUT), dead=DeadReason.PERMANENT)]
    )

    everything = [("m5", "email"), ("m4", "sms"), ("m3", "sms"), ("m2", "email"), ("m1", "email")]
    assert await dlq_ids(store, DlqFilter()) == everything
    assert await dlq_ids(store, DlqFilter(pool="email")) == [
        ("m5", "email"),
        ("m2", "email"),
        ("m1", "email"),
    ]
    assert await dlq_ids(store, DlqFilter(tag="orders.paid")) == [("m4", "sms"), ("m2", "email")]
    assert await dlq_ids(store, DlqFilter(tag="orders")) == []  # exact tag, not a prefix
    assert await dlq_ids(store, DlqFilter(error="HTTP")) == [("m3", "sms"), ("m1", "email")]
    assert await dlq_ids(store, DlqFilter(error="REFUSED")) == [("m2", "email")]
    assert await dlq_ids(store, DlqFilter(since=T0 + 30)) == everything[:3]
    assert await dlq_ids(store, DlqFilter(ids=("m1", "m4", "zz"))) == [
        ("m4", "sms"),
        ("m1", "email"),
    ]
    assert await dlq_ids(store, DlqFilter(ids=())) == []
    assert await dlq_ids(
        store, DlqFilter(pool="sms", tag="user.signup", error="404", since=T0 + 30)
    ) == [("m3", "sms")]
    assert await dlq_ids(store, DlqFilter(pool="sms", since=T0 + 31)) == [("m4", "sms")]

    entries, _ = await store.dlq_list(DlqFilter(ids=("m5",)), 10)
    assert [(e.error, e.failed_at, e.attempts, e.reason) for e in entries] == [
        (None, T0 + 50, 1, DeadReason.PERMANENT)
    ]


def test_the_dlq_cursor_codec_round_trips_exactly_and_refuses_garbage() -> None:
    at = T0 + 0.1  # a time whose shortest repr has many digits
    assert parse_dlq_cursor(format_dlq_cursor(at, 42)) == (at, 42)
    for garbage in ("", "abc", "1.5", "1.5:x", "x:3"):
        with pytest.raises(ValueError, match="invalid cursor"):
            parse_dlq_cursor(garbage)


async def test_dlq_cursor_pages_without_gaps_or_duplicates(store: Store) -> None:
    # 25 entries in two pools; pairs share a failure time to exercise the tie-break.
    specs = [(f"m{i:02}", "a" if i % 3 else "b", "t.x", f"err {i}", T0 + i // 2) for i in range(25)]
    await kill(store, specs)
    seen: list[tuple[str, str]] = []
    pages = []
    cursor = None
    while True:
        entries, cursor = await store.dlq_list(DlqFilter(), 10, cursor)
        pages.append(len(entries))
        seen.extend((e.message.id, e.pool) for e in entries)
        if cursor is None:
            break
    assert pages == [10, 10, 5]
    assert len(set(seen)) == 25
    failed = {i: at for i, _, _, _, at in specs}
    assert [failed[i] for i, _ in seen] == sorted(failed.values(), reverse=True)
    assert await store.dlq_count(DlqFilter()) == 25

    # The same with a filter, and a page size that divides the total exactly.
    a_ids = sorted(i for i, p, *_ in specs if p == "a")
    assert len(a_ids) == 16
    got, cursor = [], None
    for _ in range(2):
        entries, cursor = await store.dlq_list(DlqFilter(pool="a"), 8, cursor)
        got.extend(e.message.id for e in entries)
    assert cursor is None
    assert sorted(got) == a_ids


async def test_dlq_replay_fresh_attempts_keeps_history(store: Store) -> None:
    await kill(
        store,
        [
            ("m1", "p", "t", "e1", T0 + 10),
            ("m2", "p", "t", "e2", T0 + 20),
            ("m3", "q", "t", "e3", T0 + 15),
            ("keep", "p", "other", "e4", T0 + 30),
        ],
    )
    now = T0 + 100
    assert await store.dlq_replay(DlqFilter(tag="t"), now, interval=2.0) == {"p": 2, "q": 1}
    assert await dlq_ids(store, DlqFilter()) == [("keep", "p")]

    # Oldest failure first: m1 at now, m3 at now + 2, m2 at now + 4.
    status = await store.get_message("m2")
    assert status is not None
    js = status.jobs[0]
    assert (js.state, js.available_at, js.attempts, js.finished_at, js.dead_reason) == (
        State.QUEUED,
        now + 4,
        [],
        None,
        None,
    )
    assert js.history == [[Attempt(1, T0 + 19.5, 0.5, Outcome.FAILURE, "e2")]]

    c = await store.claim("p", 10, now)
    assert ids(c.jobs) == ["m1"]
    assert c.jobs[0].attempts == 0
    assert c.next_at == now + 4
    assert (await store.claim("q", 10, now + 1)).next_at == now + 2
    assert ids((await store.claim("q", 10, now + 2)).jobs) == ["m3"]

    # Fail m1 again, replay again: a second generation joins the history.
    await store.complete([dead(c.jobs[0], now + 5, "again")])
    assert await store.dlq_replay(DlqFilter(ids=("m1",)), now + 10) == {"p": 1}
    status = await store.get_message("m1")
    assert status is not None
    assert [[a.error for a in gen] for gen in status.jobs[0].history] == [["e1"], ["again"]]
    assert status.jobs[0].available_at == now + 10
    assert ids(await claim_all(store, "p", now + 10)) == ["m2", "m1"]  # by available_at

    assert await store.dlq_replay(DlqFilter(pool="nope"), now) == {}


async def test_dlq_purge(store: Store) -> None:
    await kill(store, [("solo", "p", "t", "x", T0 + 1), ("other", "q", "t", "x", T0 + 2)])
    await store.enqueue([new_message("fan", "p", "q")])
    (fan_p,) = await claim_all(store, "p")
    await store.complete([dead(fan_p, T0 + 3)])

    assert await store.dlq_purge(DlqFilter(pool="p")) == {"p": 2}
    assert await store.get_message("solo") is None
    status = await store.get_message("fan")  # its q job is still queued
    assert status is not None
    assert [(j.pool, j.state) for j in status.jobs] == [("q", State.QUEUED)]
    assert await dlq_ids(store, DlqFilter()) == [("other", "q")]
    assert (await store.counts(LATER))["q"] == PoolCounts(ready=1, dead=1, oldest_at=T0)
    assert "p" not in await store.counts(LATER)
    assert await store.dlq_purge(DlqFilter(ids=("other",))) == {"q": 1}
    assert await store.get_message("other") is None
    assert await store.dlq_purge(DlqFilter()) == {}


# --- housekeeping ------------------------------------------------------------------------


async def test_expire_forgets_delivered_jobs(store: Store) -> None:
    await store.enqueue([new_message("old"), new_message("new"), new_message("fan", "p", "q")])
    jobs = {j.message.id: j for j in await claim_all(store)}
    await store.complete(
        [delivered(jobs["old"], T0), delivered(jobs["fan"], T0), delivered(jobs["new"], T0 + 100)]
    )
    # Delivered at T0 + 0.5 (old, fan/p) and T0 + 100.5 (new).
    assert await store.expire(T0 + 0.5) == 0
    assert await store.expire(T0 + 50) == 2
    assert await store.get_message("old") is None
    status = await store.get_message("fan")
    assert status is not None
    assert [j.pool for j in status.jobs] == ["q"]
    assert await store.get_message("new") is not None
    assert await store.expire(T0 + 50) == 0
    # An expired id may be enqueued again: the store no longer holds it.
    assert await store.enqueue([new_message("old")]) == [True]


async def test_remembered_ids_outlive_their_messages_until_their_window_ends(
    store: Store,
) -> None:
    keyed = NewMessage(message("order-1"), ("p",), b"digest", T0 + 10)
    assert await store.enqueue([keyed]) == [True]
    (job,) = await claim_all(store)
    await store.complete([delivered(job, T0)])
    # The message is forgotten; the id is not, while its window (until T0 + 10) lasts.
    await store.expire(T0 + 50, ids_before=T0 + 5)
    assert await store.get_message("order-1") is None
    assert await store.enqueue([keyed]) == [False]
    await store.expire(T0 + 50, ids_before=T0 + 20)
    assert await store.enqueue([keyed]) == [True]


async def test_expire_over_a_long_history_with_gaps(store: Store) -> None:
    """Messages created one a second; most delivered a second later, some dead (kept),
    some still queued (kept), some delivered late (kept), some purged (gaps in the ids)."""
    await store.enqueue([new_message(f"m{i:03}", created=T0 + i) for i in range(200)])
    jobs = {j.message.id: j for j in await claim_all(store)}
    completions = []
    for i in range(200):
        job = jobs[f"m{i:03}"]
        if i % 10 == 3:
            completions.append(dead(job, T0 + i + 1))
        elif i % 10 == 5:
            completions.append(delivered(job, T0 + 500))  # delivered late
        elif i % 10 != 7:  # every 7th stays claimed (undone)
            completions.append(delivered(job, T0 + i + 1))
    await store.complete(completions)
    await store.dlq_purge(DlqFilter(ids=tuple(f"m{i:03}" for i in range(3, 120, 20))))

    # Delivered at T0 + i + 1.5 for the on-time ones: a cutoff of T0 + 100 takes i < 98.5.
    expired = await store.expire(T0 + 100)
    on_time = [i for i in range(200) if i % 10 not in (3, 5, 7)]
    assert expired == len([i for i in on_time if i + 1.5 < 100])
    for i in range(200):
        status = await store.get_message(f"m{i:03}")
        gone = (i in on_time and i + 1.5 < 100) or (i % 20 == 3 and i < 120)
        assert (status is None) == gone, i
    assert await store.expire(T0 + 100) == 0
    assert await store.expire(T0 + 1000) == len([i for i in range(200) if i % 10 == 5]) + len(
        [i for i in on_time if i + 1.5 >= 100]
    )


async def test_pool_settings_round_trip_and_persist(harness: Harness, store: Store) -> None:
    assert await store.load_pool_settings() == {}
    await store.save_pool_settings("email", {"rate": 5.5, "paused": True})
    await store.save_pool_settings("sms", {"concurrency": 3})
    await store.save_pool_settings("email", {"rate": 1.0})  # replaces the whole set
    expected = {"email": {"rate": 1.0}, "sms": {"concurrency": 3}}
    assert await store.load_pool_settings() == expected
    loaded = await store.load_pool_settings()
    loaded["email"]["rate"] = 99
    assert await store.load_pool_settings() == expected

    store, _ = await harness.reopen(store)
    assert await store.load_pool_settings() == expected


async def test_audit_round_trip_and_pages(harness: Harness, store: Store) -> None:
    assert await store.audit_list(10) == ([], None)
    entries = [
        AuditEntry(
            at=T0 + i,
            actor=f"user{i}",
            action="replay" if i % 2 else "pause",
            target=f"pool:p{i}",
            detail={"filter": {"pool": "p"}, "n": i, "dry_run": False},
            count=i if i % 2 else None,
        )
        for i in range(7)
    ]
    for e in entries:
        await store.audit(e)
    newest_first = entries[::-1]
    got: list[AuditEntry] = []
    cursor = None
    pages = []
    while True:
        page, cursor = await store.audit_list(3, cursor)
        pages.append(len(page))
        got.extend(page)
        if cursor is None:
            break
    assert pages == [3, 3, 1]
    assert got == newest_first
    store, _ = await harness.reopen(store)
    assert (await store.audit_list(1))[0] == [entries[-1]]


# --- lifecycle ---------------------------------------------------------------------------


async def test_closed_store_refuses_calls(store: Store) -> None:
    await store.close()
    await store.close()  # idempotent
    assert not await store.ping()
    with pytest.raises(StoreError):
        await store.enqueue([new_message("m")])
    with pytest.raises(StoreError):
        await store.claim("p", 1, T0)
    with pytest.raises(StoreError):
        await store.get_message("m")
    with pytest.raises(StoreError):
        await store.counts(T0)


async def test_ping(store: Store) -> None:
    assert await store.ping()


def test_values_are_msgspec_encodable() -> None:
    # The API encodes store answers directly; make sure the types allow it.
    assert msgspec.json.encode(PoolCounts(ready=1)) == (
        b'{"ready":1,"scheduled":0,"claimed":0,"dead":0,"oldest_at":null}'
    )
