"""taskiq on Redis (taskiq-redis's ListQueueBroker, no result backend). Worker: `taskiq
worker --workers 2`, its defaults otherwise. Jobs are sent 1,000 concurrent `kiq` calls at
a time."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from taskiq_redis import ListQueueBroker

from . import tally

broker = ListQueueBroker(url=os.environ["PEERS_REDIS_URL"])


@broker.task(task_name="noop")
async def noop(payload: Any) -> None:
    tally.done()


async def produce(n: int, payload: Any) -> None:
    await broker.startup()
    try:
        for start in range(0, n, 1000):
            await asyncio.gather(*(noop.kiq(payload) for _ in range(min(1000, n - start))))
    finally:
        await broker.shutdown()
