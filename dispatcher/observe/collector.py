"""Scrape-time metrics: the custom collector and the event-loop monitor.

prometheus_client's aiohttp handler calls `collect()` synchronously on the event loop, so
collect() must not touch the store or a file. The async /metrics handler first awaits
`refresh()`, which reads the store's counters (cheap: writer-maintained), the live task
count and the process metrics (in a thread: they read /proc), and keeps them as a snapshot;
`collect()` then only reads that snapshot, the pools' live attributes and the per-attempt
`PoolSeries`. /metrics renders these families with `exposition.render` (fast), the rest of
the registry with prometheus_client.
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
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..config import PoolConfig
from ..errors import StoreError
from ..message import PoolInfo
from .exposition import Family, LabelSet, render

if TYPE_CHECKING:
    from .metrics import FastHistogram, PoolSeries

log = logging.getLogger("dispatcher.metrics")

REFRESH_TIMEOUT = 2.0  # a hung store must not hang /metrics: serve the last snapshot
LOOP_MONITOR_INTERVAL = 0.25


class LivePool(Protocol):
    """The live attributes of a pool that a scrape reads (exact at scrape time)."""

    @property
    def busy(self) -> int: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def limit(self) -> int: ...
    @property
    def circuit_state(self) -> int: ...
    @property
    def circuit_opened(self) -> int: ...
    @property
    def rate(self) -> float | None: ...
    @property
    def paused(self) -> bool: ...
    @property
    def rate_wait_seconds(self) -> float: ...


class Source(Protocol):
    """What the collector reads from the Dispatcher."""

    @property
    def pools(self) -> Mapping[str, LivePool]: ...

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
    """The per-pool and runtime families. `families()` builds them from the snapshot, the
    pools' live attributes and the PoolSeries; `render()` is the fast path of /metrics and
    `collect()` the standard one (both carry the same samples)."""

    def __init__(
        self, source: Source, configs: Mapping[str, PoolConfig], series: Mapping[str, PoolSeries]
    ) -> None:
        self._source = source
        self._configs = configs
        self._series = series
        self._process = ProcessCollector(registry=None)
        self.snapshot = Snapshot()
        self._labels: dict[tuple[str, ...], LabelSet] = {}
        self._none = LabelSet({})

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
        for family in self.families():
            yield family.to_metric()

    def render(self, openmetrics: bool) -> str:
        return render(self.families(), openmetrics)

    def process_families(self) -> list[Metric]:
        """process_* from the last refresh (read in a thread: they come from /proc)."""
        return self.snapshot.process

    def _l(self, *pairs: str) -> LabelSet:
        """The cached LabelSet of ("pool", "email", "outcome", "success", ...)."""
        found = self._labels.get(pairs)
        if found is None:
            labels = dict(zip(pairs[::2], pairs[1::2], strict=True))
            found = self._labels[pairs] = LabelSet(labels)
        return found

    def families(self) -> list[Family]:
        f = self._attempt_families() + self._pool_families()
        tasks = Family("dispatcher_asyncio_tasks", "gauge", "Live asyncio tasks (go_goroutines).")
        tasks.add(self._none, self.snapshot.tasks)
        threads = Family("dispatcher_threads", "gauge", "Python threads.")
        threads.add(self._none, threading.active_count())
        return [*f, tasks, threads]

    def _attempt_families(self) -> list[Family]:
        deliveries = Family("dispatcher_deliveries", "counter", "Delivery attempts by outcome.")
        retries = Family("dispatcher_retries", "counter", "Attempts rescheduled for a retry.")
        dead = Family("dispatcher_dead_lettered", "counter", "Jobs moved to the DLQ.")
        wait = Family("dispatcher_queue_wait_seconds", "histogram", "Ready to attempt start.")
        duration = Family("dispatcher_delivery_duration_seconds", "histogram", "One attempt.")
        e2e = Family("dispatcher_end_to_end_seconds", "histogram", "Accepted to delivered.")
        for pool, s in self._series.items():
            labels = self._l("pool", pool)
            for outcome, n in s.outcomes().items():
                by_outcome = self._l("pool", pool, "outcome", outcome)
                deliveries.add(by_outcome, n, "_total")
                _histogram(duration, by_outcome, s.duration[outcome])
            retries.add(labels, s.retries, "_total")
            for reason, n in s.dead.items():
                dead.add(self._l("pool", pool, "reason", reason), n, "_total")
            _histogram(wait, labels, s.queue_wait)
            _histogram(e2e, labels, s.end_to_end)
        return [deliveries, retries, dead, wait, duration, e2e]

    def _pool_families(self) -> list[Family]:
        backlog = Family("dispatcher_backlog_messages", "gauge", "Undelivered jobs by state.")
        oldest = Family(
            "dispatcher_oldest_message_age_seconds",
            "gauge",
            "Age of the oldest undelivered message (0 if none).",
        )
        dlq = Family("dispatcher_dlq_messages", "gauge", "Jobs in the DLQ.")
        limit = Family(
            "dispatcher_pool_concurrency_limit",
            "gauge",
            "Max attempts in flight (the effective limit, adaptive or configured).",
        )
        busy = Family("dispatcher_pool_busy_workers", "gauge", "Attempts in flight now.")
        rate = Family(
            "dispatcher_pool_rate_limit", "gauge", "Deliveries per second (0 = unlimited)."
        )
        paused = Family("dispatcher_pool_paused", "gauge", "1 when paused.")
        waited = Family(
            "dispatcher_rate_limit_wait_seconds",
            "counter",
            "Time workers waited for rate-limit tokens.",
        )
        circuit = Family("dispatcher_pool_circuit_state", "gauge", "0 closed, 1 half-open, 2 open.")
        opened = Family("dispatcher_circuit_opened", "counter", "Times the circuit opened.")
        infos = self.snapshot.infos
        pools = self._source.pools
        for name, config in self._configs.items():
            labels = self._l("pool", name)
            info = infos.get(name)
            pool = pools.get(name)
            backlog.add(self._l("pool", name, "state", "ready"), info.backlog if info else 0)
            backlog.add(self._l("pool", name, "state", "scheduled"), info.scheduled if info else 0)
            backlog.add(self._l("pool", name, "state", "in_flight"), pool.busy if pool else 0)
            oldest.add(labels, info.oldest_age_seconds if info else 0)
            dlq.add(labels, info.dlq if info else 0)
            if pool is not None:  # live attributes, exact at scrape time
                limit.add(labels, pool.limit)
                busy.add(labels, pool.busy)
                rate.add(labels, pool.rate or 0)
                paused.add(labels, 1 if pool.paused else 0)
                waited.add(labels, pool.rate_wait_seconds, "_total")
                circuit.add(labels, pool.circuit_state)
                opened.add(labels, pool.circuit_opened, "_total")
            else:  # before start: the configured values
                limit.add(labels, config.concurrency)
                busy.add(labels, 0)
                rate.add(labels, config.rate or 0)
                paused.add(labels, 0)
                waited.add(labels, 0.0, "_total")
                circuit.add(labels, 0)  # every process starts closed
                opened.add(labels, 0, "_total")
        return [backlog, oldest, dlq, limit, busy, rate, paused, waited, circuit, opened]


def _histogram(family: Family, labels: LabelSet, h: FastHistogram) -> None:
    family.add_histogram(labels, h.les, list(h.counts), h.sum, h.exemplars)


class ProcessSnapshot(Collector):
    """process_* as of the last refresh, for the standard part of the registry."""

    def __init__(self, collector: DispatcherCollector) -> None:
        self._collector = collector

    def collect(self) -> Iterable[Metric]:
        return self._collector.process_families()


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
