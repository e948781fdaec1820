"""huey on Redis: RedisHuey (blocking pops), results off. Consumer: two worker processes
(`-k process`, which its help advises for CPU-bound work, as a no-op loop is)."""

from __future__ import annotations

import os
from typing import Any

from huey import RedisHuey

from . import tally

huey = RedisHuey("peers", url=os.environ["PEERS_REDIS_URL"], results=False)


@huey.task()
def noop(payload: Any) -> None:
    tally.done()


def produce(n: int, payload: Any) -> None:
    for _ in range(n):
        noop(payload)
