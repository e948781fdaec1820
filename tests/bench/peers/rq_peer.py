"""RQ on Redis. Two `rq worker` processes with SimpleWorker, which RQ's performance notes
advise for jobs of a few milliseconds (no fork per job, about 6x faster); results not
kept. Jobs are enqueued in bulk with Queue.enqueue_many (pipelined), 1,000 at a time."""

from __future__ import annotations

import os
from typing import Any

from redis import Redis
from rq import Queue

from . import tally

URL = os.environ["PEERS_REDIS_URL"]


def produce(n: int, payload: Any) -> None:
    queue = Queue("peers", connection=Redis.from_url(URL))
    for start in range(0, n, 1000):
        queue.enqueue_many(
            [
                Queue.prepare_data(tally.noop, (payload,), result_ttl=0)
                for _ in range(min(1000, n - start))
            ]
        )
