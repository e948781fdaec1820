"""The demo sink: pretends to deliver, with a latency and a failure rate, so the built-in demo
config shows retries, both DLQ reasons and latency histograms without any real target.

Randomness is injected: each attempt draws once for the latency jitter (only when `latency` is
above 0) and once for the outcome, in that order.
"""

from __future__ import annotations

import asyncio
import random as _random
from collections.abc import Callable

from ..config import DemoSinkConfig
from ..errors import Permanent, Retry
from ..message import Job
from .base import Sink

#: the share of failures that are permanent, so the DLQ shows both reasons
PERMANENT_SHARE = 0.1


class DemoSink(Sink):
    kind = "demo"

    def __init__(
        self,
        pool: str,
        config: DemoSinkConfig,
        *,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.pool = pool
        self._fail_rate = config.fail_rate
        self._latency = config.latency
        self._random = random

    async def deliver(self, job: Job, attempt: int) -> None:
        if self._latency > 0:
            await asyncio.sleep(self._latency * (0.5 + self._random()))  # 0.5x to 1.5x
        draw = self._random()
        if draw < self._fail_rate * PERMANENT_SHARE:
            raise Permanent(f"demo permanent failure (fail_rate {self._fail_rate})")
        if draw < self._fail_rate:
            raise Retry(f"demo failure (fail_rate {self._fail_rate})")
