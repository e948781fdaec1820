"""Celery on Redis. Worker: the prefork pool with two processes. Settings from Celery's
"Optimizing" guide for many short tasks: a large prefetch multiplier (it suggests 64 or
128), rate limits off, no result backend; gossip, mingle and heartbeat off (events nobody
consumes here). Jobs go out through one acquired producer (no connection per call)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from . import tally

app = Celery("peers", broker=os.environ["PEERS_REDIS_URL"])
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=128,
    worker_disable_rate_limits=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop(payload: Any) -> None:
    tally.done()


def produce(n: int, payload: Any) -> None:
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            noop.apply_async((payload,), producer=producer)
