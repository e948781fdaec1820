"""The claim window's size: enough for one claim round trip, about 0.1 s of work when fast."""

from __future__ import annotations

import time

from dispatcher.acker import Acker
from dispatcher.config import LogSinkConfig, PoolConfig
from dispatcher.pool import Pool
from dispatcher.sinks.log import LogSink
from dispatcher.stores.memory import MemoryStore


def _pool(concurrency: int) -> Pool:
    store = MemoryStore()
    config = PoolConfig(sink=LogSinkConfig(), concurrency=concurrency)
    return Pool("p", config, store, LogSink("p", LogSinkConfig()), Acker(store, lambda _: None))


def _paced(pool: Pool, started: int, seconds: float) -> int:
    pool._started = started
    pool._paced_at = time.monotonic() - seconds
    pool._pace_window()
    return pool.window_size


def test_the_window_follows_the_pace_within_its_bounds() -> None:
    pool = _pool(concurrency=16)
    assert pool.window_size == 128  # 8 per worker
    assert _paced(pool, started=50, seconds=1.0) == 128  # slow: the floor
    assert _paced(pool, started=20_000, seconds=1.0) in range(1990, 2001)  # ~0.1 s of work
    assert pool._low_water == pool.window_size // 2
    assert _paced(pool, started=10**6, seconds=1.0) == 4096  # the ceiling
    assert _paced(pool, started=0, seconds=5.0) == 128  # idle again


async def test_the_floor_follows_concurrency() -> None:
    pool = _pool(concurrency=4)
    assert pool.window_size == 64
    pool.configure(rate=None, burst=1, concurrency=200)  # starts workers
    try:
        assert pool.window_size == 1024
    finally:
        await pool.abort()
