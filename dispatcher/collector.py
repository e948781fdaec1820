"""Scrape-time metrics: the custom collector and the event-loop monitor.

prometheus_client's aiohttp handler calls `collect()` synchronously on the event loop, so
collect() must not touch the store or a file. The async /metrics handler first awaits
`refresh()`, which reads the store's counters (cheap: writer-maintained), the live task
count and the process metrics (in a thread: they read /proc), and keeps them as a snapshot;
`collect()` then only reads that snapshot, the pools' live attributes and the per-attempt
`PoolSeries`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Histogram, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .config import PoolConfig
from .errors import StoreError

if TYPE_CHECKING:
    from .dispatcher import PoolInfo
    from .metrics import FastHistogram, PoolSeries
    from .pool import Pool

log = logging.getLogger("dispatcher.metrics")

REFRESH_TIMEOUT = 2.0  # a hung store must not hang /metrics: serve the last snapshot
LOOP_MONITOR_INTERVAL = 0.25


class Source(Protocol):
    """What the collector reads from the Dispatcher."""

    @property
    def pools(self) -> Mapping[str, Pool]: ...

    @property
    def started(self) -> bool: ...

    async def pool_infos(self) -> list[PoolInfo]: ...


class Snapshot:
    __slots__ = ("infos", "process", "tasks")

    def __init__(self) -> None:
        self.infos: dict[str, PoolInfo] = {}
        self.tasks = 0
        self.process: list[Metric] = []


class DispatcherCollector(Collector):
    def __init__(
        self, source: Source, configs: Mapping[str, PoolConfig], series: Mapping[str, PoolSeries]
    ) -> None:
        self._source = source
        self._configs = configs
        self._series = series
        self._process = ProcessCollector(registry=None)
        self.snapshot = Snapshot()

    async def refresh(self) -> None:
        snap = Snapshot()
        snap.tasks = len(asyncio.all_tasks())
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT):
                if self._source.started:
                    snap.infos = {i.name: i for i in await self._source.pool_infos()}
                snap.process = await asyncio.to_thread(lambda: list(self._process.collect()))
        except (StoreError, TimeoutError) as exc:
            log.warning("metrics: store-derived gauges are stale: %s", exc)
            snap.infos = self.snapshot.infos
        self.snapshot = snap

    def collect(self) -> Iterator[Metric]:
        series = self._series
        yield from self._attempt_families(series)
        yield from self._pool_families()
        yield GaugeMetricFamily(
            "dispatcher_asyncio_tasks",
            "Live asyncio tasks (as go_goroutines), at the last refresh.",
            value=self.snapshot.tasks,
        )
        yield GaugeMetricFamily(
            "dispatcher_threads", "Python threads.", value=threading.active_count()
        )
        yield from self.snapshot.process

    @staticmethod
    def _attempt_families(series: Mapping[str, PoolSeries]) -> Iterable[Metric]:
        deliveries = CounterMetricFamily(
            "dispatcher_deliveries", "Delivery attempts by outcome.", labels=["pool", "outcome"]
        )
        retries = CounterMetricFamily(
            "dispatcher_retries", "Attempts rescheduled for a retry.", labels=["pool"]
        )
        dead = CounterMetricFamily(
            "dispatcher_dead_lettered", "Jobs moved to the DLQ.", labels=["pool", "reason"]
        )
        wait = HistogramMetricFamily(
            "dispatcher_queue_wait_seconds", "Ready to attempt start.", labels=["pool"]
        )
        duration = HistogramMetricFamily(
            "dispatcher_delivery_duration_seconds", "One attempt.", labels=["pool", "outcome"]
        )
        e2e = HistogramMetricFamily(
            "dispatcher_end_to_end_seconds", "Accepted to delivered.", labels=["pool"]
        )
        for pool, s in series.items():
            for outcome, n in s.outcomes().items():
                deliveries.add_metric([pool, outcome], n)
                _histogram(duration, [pool, outcome], s.duration[outcome])
            retries.add_metric([pool], s.retries)
            for reason, n in s.dead.items():
                dead.add_metric([pool, reason], n)
            _histogram(wait, [pool], s.queue_wait)
            _histogram(e2e, [pool], s.end_to_end)
        return (deliveries, retries, dead, wait, duration, e2e)

    def _pool_families(self) -> Iterable[Metric]:
        backlog = GaugeMetricFamily(
            "dispatcher_backlog_messages", "Undelivered jobs by state.", labels=["pool", "state"]
        )
        oldest = GaugeMetricFamily(
            "dispatcher_oldest_message_age_seconds",
            "Age of the oldest undelivered message (0 if none).",
            labels=["pool"],
        )
        dlq = GaugeMetricFamily("dispatcher_dlq_messages", "Jobs in the DLQ.", labels=["pool"])
        limit = GaugeMetricFamily(
            "dispatcher_pool_concurrency_limit", "Max attempts in flight.", labels=["pool"]
        )
        busy = GaugeMetricFamily(
            "dispatcher_pool_busy_workers", "Attempts in flight now.", labels=["pool"]
        )
        rate = GaugeMetricFamily(
            "dispatcher_pool_rate_limit", "Deliveries per second (0 = unlimited).", labels=["pool"]
        )
        paused = GaugeMetricFamily("dispatcher_pool_paused", "1 when paused.", labels=["pool"])
        waited = CounterMetricFamily(
            "dispatcher_rate_limit_wait_seconds",
            "Time workers waited for rate-limit tokens.",
            labels=["pool"],
        )
        infos = self.snapshot.infos
        pools = self._source.pools
        for name, config in self._configs.items():
            labels = [name]
            info = infos.get(name)
            if info is not None:
                backlog.add_metric([name, "ready"], info.backlog)
                backlog.add_metric([name, "scheduled"], info.scheduled)
                oldest.add_metric(labels, info.oldest_age_seconds)
                dlq.add_metric(labels, info.dlq)
            else:
                backlog.add_metric([name, "ready"], 0)
                backlog.add_metric([name, "scheduled"], 0)
                oldest.add_metric(labels, 0)
                dlq.add_metric(labels, 0)
            pool = pools.get(name)
            if pool is not None:  # live attributes, exact at scrape time
                backlog.add_metric([name, "in_flight"], pool.busy)
                limit.add_metric(labels, pool.concurrency)
                busy.add_metric(labels, pool.busy)
                rate.add_metric(labels, pool.rate or 0.0)
                paused.add_metric(labels, 1 if pool.paused else 0)
                waited.add_metric(labels, pool.rate_wait_seconds)
            else:  # before start: the configured values
                backlog.add_metric([name, "in_flight"], 0)
                limit.add_metric(labels, config.concurrency)
                busy.add_metric(labels, 0)
                rate.add_metric(labels, config.rate or 0.0)
                paused.add_metric(labels, 0)
                waited.add_metric(labels, 0.0)
        return (backlog, oldest, dlq, limit, busy, rate, paused, waited)


def _histogram(family: HistogramMetricFamily, labels: list[str], h: FastHistogram) -> None:
    family.add_metric(labels, h.buckets(), h.sum)


class LoopMonitor:
    """Measures how late the loop wakes a timer (Go's scheduler latency): a task sleeps a
    fixed interval and observes the overshoot. A busy or blocked loop shows up here first."""

    def __init__(self, histogram: Histogram, interval: float = LOOP_MONITOR_INTERVAL) -> None:
        self._histogram = histogram
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="metrics:loop-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        interval = self._interval
        while True:
            started = time.perf_counter()
            await asyncio.sleep(interval)
            lag = time.perf_counter() - started - interval
            self._histogram.observe(lag if lag > 0.0 else 0.0)
