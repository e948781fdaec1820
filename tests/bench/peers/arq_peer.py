"""arq on Redis. Two `arq` worker processes. Its defaults poll every 0.5 s and run at most
10 jobs at once per worker, which caps a no-op queue far below what Redis allows: here
100 jobs at once and a 10 ms poll, generous to arq. Results not kept (keep_result 0).
Jobs are enqueued 1,000 concurrent calls at a time over one pool."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from arq.connections import RedisSettings, create_pool

from . import tally

SETTINGS = RedisSettings.from_dsn(os.environ["PEERS_REDIS_URL"])


async def noop(ctx: Any, payload: Any) -> None:
    tally.done()


class WorkerSettings:
    functions = [noop]
    redis_settings = SETTINGS
    keep_result = 0
    max_jobs = 100
    poll_delay = 0.01


async def produce(n: int, payload: Any) -> None:
    pool = await create_pool(SETTINGS)
    try:
        for start in range(0, n, 1000):
            calls = (pool.enqueue_job("noop", payload) for _ in range(min(1000, n - start)))
            await asyncio.gather(*calls)
    finally:
        await pool.aclose()
