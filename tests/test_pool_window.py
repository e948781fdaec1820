"""The claim window's size: enough for one claim round trip, about 0.1 s of work when fast."""

from __future__ import annotations

import asyncio
from typing import Any

from dispatcher.acker import Acker
from dispatcher.config import LogSinkConfig, PoolConfig
from dispatcher.pool import Pool
from dispatcher.sinks.log import LogSink
from dispatcher.stores.memory import MemoryStore

from .factories import T0, new_message


def _pool(concurrency: int, now: list[float]) -> Pool:
    """A pool whose monotonic clock reads `now[0]`: time passes when a test says so."""
    store = MemoryStore()
    config = PoolConfig(sink=LogSinkConfig(), concurrency=concurrency)
    sink = LogSink("p", LogSinkConfig())
    return Pool("p", config, store, sink, Acker(store, lambda _: None), monotonic=lambda: now[0])


def _paced(pool: Pool, now: list[float], started: int, seconds: float) -> int:
    """The window size after `started` jobs in `seconds` since the last claim."""
    pool._started = started
    now[0] += seconds
    pool._pace_window()
    return pool.window_size


def test_the_window_follows_the_pace_within_its_bounds() -> None:
    now = [0.0]
    pool = _pool(concurrency=16, now=now)
    assert pool.window_size == 128  # 8 per worker
    assert _paced(pool, now, started=50, seconds=1.0) == 128  # slow: the floor
    assert _paced(pool, now, started=20_000, seconds=1.0) == 2000  # 0.1 s of work
    assert pool._low_water == pool.window_size // 2
    assert _paced(pool, now, started=10**6, seconds=1.0) == 4096  # the ceiling
    assert _paced(pool, now, started=0, seconds=5.0) == 128  # idle again


async def test_the_floor_follows_concurrency() -> None:
    pool = _pool(concurrency=4, now=[0.0])
    assert pool.window_size == 64
    pool.configure(rate=None, burst=1, concurrency=200)  # starts workers
    try:
        assert pool.window_size == 1024
    finally:
        await pool.abort()


async def test_a_window_paced_below_what_it_holds_claims_nothing() -> None:
    now = [0.0]
    pool = _pool(concurrency=8, now=now)
    store = pool._store
    await store.open()
    claims: list[int] = []
    real_claim = store.claim

    async def counting_claim(name: str, limit: int, now: float) -> Any:
        claims.append(limit)
        return await real_claim(name, limit, now)

    store.claim = counting_claim  # type: ignore[method-assign,assignment]
    pool._window.extend([None] * 100)  # type: ignore[list-item]  # more than the floor of 64
    pool._low_water = 200  # as a fast phase left it
    now[0] += 10.0  # and nothing started for 10 s: the floor again
    pool._feeder = asyncio.create_task(pool._feed_loop())
    try:
        await asyncio.sleep(0.05)
        assert claims == []  # no claim with a negative or zero limit
        assert pool.window_size == 64
    finally:
        pool._stopping = True
        pool._feed.set()
        await asyncio.wait_for(pool._feeder, 5)
        await store.close()


async def test_handoff_room_is_the_window_s_and_held_until_answered() -> None:
    now = [0.0]
    pool = _pool(concurrency=16, now=now)
    assert pool.offer(100) == 100
    assert pool.offer(1000) == 28  # 128 in all: what the window lacks, promised or held
    assert pool.offer(5) == 0
    pool.receive([], 100)  # an enqueue that took nothing gives its room back
    assert pool.offer(1000) == 100
    await pool.set_paused(True)
    assert pool.offer(10) == 0  # a paused pool takes nothing


async def test_jobs_received_while_paused_go_back_to_the_store() -> None:
    store = MemoryStore()
    await store.open()
    config = PoolConfig(sink=LogSinkConfig(), concurrency=4)
    pool = Pool("p", config, store, LogSink("p", LogSinkConfig()), Acker(store, lambda _: None))
    await store.enqueue([new_message("a")])
    claimed = (await store.claim("p", 10, T0 + 1)).jobs
    offered = pool.offer(10)
    await pool.set_paused(True)  # between the offer and the commit
    pool.receive(claimed, offered)
    for _ in range(10):
        await asyncio.sleep(0)
    assert not pool._window
    assert (await store.counts(T0 + 1))["p"].ready == 1
