"""The overview's memory: a ring of samples of every pool, taken by one background task.

Every `interval` seconds the sampler reads `Dispatcher.pool_infos()` and
`Dispatcher.attempt_totals()` and keeps the last `keep` samples (5 minutes by default).
Throughput and failure rate come from differences between samples, the sparklines from the
whole ring, and the live endpoint answers from the latest sample, so any number of open
consoles costs the store one query round per interval, not one per browser.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from dispatcher.dispatcher import Dispatcher
from dispatcher.message import PoolInfo

log = logging.getLogger("console.sampler")


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # monotonic seconds
    totals: dict[str, tuple[int, int]]  # pool -> attempts (succeeded, failed) since start
    infos: dict[str, PoolInfo]


@dataclass(frozen=True, slots=True)
class Rates:
    delivered_per_second: float
    failed_per_second: float

    @property
    def failure_ratio(self) -> float:
        total = self.delivered_per_second + self.failed_per_second
        return self.failed_per_second / total if total else 0.0


class Sampler:
    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        interval: float = 2.0,
        keep: int = 150,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dispatcher = dispatcher
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=keep)
        self._clock = clock

    async def sample(self) -> Sample:
        infos = await self.dispatcher.pool_infos()
        sample = Sample(
            at=self._clock(),
            totals=self.dispatcher.attempt_totals(),
            infos={info.name: info for info in infos},
        )
        self.samples.append(sample)
        return sample

    async def run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # a failing store must not end the sampling for good
                log.exception("sampling the pools failed")
            await asyncio.sleep(self.interval)

    @property
    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def rates(self, pool: str) -> Rates:
        """Average rates over the whole ring (the last few minutes)."""
        if len(self.samples) < 2:
            return Rates(0.0, 0.0)
        return _rates(self.samples[0], self.samples[-1], pool)

    def series(self, pool: str) -> tuple[list[float], list[float], list[float]]:
        """Per interval: delivered/s, failed/s and backlog, oldest first."""
        delivered: list[float] = []
        failed: list[float] = []
        backlog: list[float] = []
        previous: Sample | None = None
        for sample in self.samples:
            info = sample.infos.get(pool)
            if previous is not None:
                r = _rates(previous, sample, pool)
                delivered.append(r.delivered_per_second)
                failed.append(r.failed_per_second)
                backlog.append(float(info.backlog + info.scheduled) if info else 0.0)
            previous = sample
        return delivered, failed, backlog


def _rates(first: Sample, last: Sample, pool: str) -> Rates:
    seconds = last.at - first.at
    if seconds <= 0:
        return Rates(0.0, 0.0)
    ok0, bad0 = first.totals.get(pool, (0, 0))
    ok1, bad1 = last.totals.get(pool, (0, 0))
    return Rates(max(0, ok1 - ok0) / seconds, max(0, bad1 - bad0) / seconds)


def sparkline(values: list[float], width: int = 120, height: int = 28, top: float = 0.0) -> str:
    """An SVG path (`d` attribute) through `values`, scaled to the box; the y axis starts at
    zero and ends at max(values, top). Empty when there is nothing to draw."""
    if not values:
        return ""
    peak = max(max(values), top)
    step = width / max(1, len(values) - 1)
    pad = 1.0  # keep the stroke inside the box

    def y(v: float) -> float:
        return height - pad - (v / peak * (height - 2 * pad) if peak > 0 else 0.0)

    if len(values) == 1:
        return f"M0,{y(values[0]):.1f}H{width}"
    return "M" + " L".join(f"{i * step:.1f},{y(v):.1f}" for i, v in enumerate(values))
