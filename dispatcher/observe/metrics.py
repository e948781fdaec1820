"""Prometheus metrics: every series of DESIGN.md Part 2 "Metrics", in one registry per
Dispatcher (tests run many dispatchers in one process; nothing is global).

Three kinds of series, by how often they change:

- Per attempt (deliveries, retries, dead letters, queue wait, duration, end to end): plain
  numbers in a `PoolSeries` bound once per pool and updated on the event loop thread only,
  so without locks or label look-ups (prometheus_client takes a lock per `inc`, and a
  histogram observe walks every bucket in Python: about 1.5 us, a tenth of our budget per
  message). They are counted per batch of outcomes the acker has just written
  (`Metrics.completed`), a few C loops over the batch rather than a middleware call per
  attempt; only the exemplars, which need the attempt's span, are set per attempt, and only
  while traces record (`ExemplarMiddleware`). `collector.Collector` turns them into
  families at scrape time.
- Per batch or per request (enqueued, rejected, replays, purges, store latency, HTTP, logs):
  ordinary prometheus_client metrics, children bound up front where config knows the labels.
- Point-in-time values (backlog, DLQ, busy workers, loop lag, tasks): read at scrape time by
  the collector from a snapshot the async /metrics handler refreshes first, so a scrape
  never blocks the loop on the store.

Every label value comes from config (pool names) or a fixed set; never a tag or an id.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
)
from prometheus_client.samples import Exemplar

from ..config import Settings
from ..message import Accepted, Completion, DeadReason, Outcome
from ..middleware import Middleware
from ..sinks.base import current_traceparent
from ..version import __version__
from .collector import DispatcherCollector, LoopMonitor, ProcessSnapshot, Source

# Few buckets on purpose: each is a line per pool on every scrape (see the scrape benchmark).
QUEUE_WAIT_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 1800, 3600)
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
END_TO_END_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 1800, 3600, 14400)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1, 2.5, 5)  # fmt: skip

REJECT_REASONS = ("invalid", "unroutable", "too_large", "backlog_full", "unavailable",
                  "unauthorized", "duplicate")  # fmt: skip
OUTCOMES = tuple(o.value for o in Outcome)
DEAD_REASONS = tuple(r.value for r in DeadReason)
LOG_LEVELS = ("warning", "error", "critical")
#: Store method -> `operation` label. The three hot ones use DESIGN's words.
STORE_OPERATIONS = {"enqueue": "commit", "claim": "claim", "complete": "ack"}


class FastHistogram:
    """One histogram series, updated on the loop thread only: no lock, a batch of values at a
    time. Keeps the latest exemplar per bucket of the values of traced attempts."""

    __slots__ = ("bounds", "counts", "exemplars", "les", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.les = (*(repr(b) for b in self.bounds), "+Inf")  # the `le` label values
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.exemplars: list[Exemplar | None] | None = None

    def observe_many(self, values: list[float], *, rising: bool = False) -> None:
        """Counts a batch of values in a few C loops, not a bisect call (about 100 ns) per
        value: the buckets of the lowest and the highest value and, when they differ, a sort
        and a bisection per bucket in between. `rising`: the values come about in ascending
        order (a batch's queue waits and end-to-end times: the attempts' order), so sorting
        first costs little and gives both ends; otherwise min and max do, and only a batch
        that spans buckets is sorted (sorting values in no order, as a batch's durations
        are, costs twice min and max: its comparisons are unpredictable). May sort
        `values`."""
        if not values:
            return
        if rising:
            values.sort()
        bounds, counts = self.bounds, self.counts
        last = bisect_left(bounds, values[-1] if rising else max(values))
        # all within the first bucket (a fast sink's durations): no need for the lowest
        first = bisect_left(bounds, values[0] if rising else min(values)) if last else 0
        below = 0  # how many values lie in the buckets before bucket i
        if first < last:
            values.sort()  # (when rising, already sorted: a comparison a value)
            for i in range(first, last):
                upto = bisect_right(values, bounds[i], below)  # those <= its `le` bound
                counts[i] += upto - below
                below = upto
        counts[last] += len(values) - below
        self.sum += sum(values)

    def exemplar(self, value: float, traceparent: str) -> None:
        """Make `value`, of the attempt `traceparent` names, its bucket's exemplar. Counts
        nothing: the batch that counts the attempt does (`count_completions`)."""
        i = bisect_left(self.bounds, value)
        if self.exemplars is None:
            self.exemplars = [None] * len(self.counts)
        labels = {"trace_id": traceparent[3:35], "span_id": traceparent[36:52]}
        self.exemplars[i] = Exemplar(labels, value)


class PoolSeries:
    """The per-attempt series of one pool, bound once (DESIGN: no label look-ups per message).
    Outcomes are attributes, not a dict keyed by the enum: Enum.__hash__ is Python code."""

    __slots__ = ("dead", "duration", "end_to_end", "failure", "queue_wait", "retries",
                 "success", "timeout")  # fmt: skip

    def __init__(self) -> None:
        self.success = self.failure = self.timeout = self.retries = 0
        self.duration = {o.value: FastHistogram(DELIVERY_BUCKETS) for o in Outcome}
        self.queue_wait = FastHistogram(QUEUE_WAIT_BUCKETS)
        self.end_to_end = FastHistogram(END_TO_END_BUCKETS)
        self.dead = dict.fromkeys(DEAD_REASONS, 0)

    def outcomes(self) -> dict[str, int]:
        return {"success": self.success, "failure": self.failure, "timeout": self.timeout}


_TIMEOUT = Outcome.TIMEOUT


def count_completions(
    s: PoolSeries, delivered: Sequence[Completion], failed: Sequence[Completion]
) -> None:
    """Counts and times the attempts of one pool in a batch the acker wrote. Everything it
    needs is in each Completion (the attempt's start and duration on the dispatcher's clock,
    its fate), so it runs long after the attempts ended, once per batch.

    The hot path of the whole feature: a list comprehension per series and C loops over
    its values (`FastHistogram.observe_many`). A Python loop with a bisect per value costs
    twice as much (0.8 against 0.35 us a completion in the overhead benchmark)."""
    s.success += len(delivered)
    s.queue_wait.observe_many(queue_waits(delivered), rising=True)
    s.duration["success"].observe_many([c.attempt.duration for c in delivered])
    s.end_to_end.observe_many(
        [c.attempt.started_at + c.attempt.duration - c.job.message.created_at for c in delivered],
        rising=True,
    )
    if failed:
        _count_failed(s, failed)


def _count_failed(s: PoolSeries, failed: Sequence[Completion]) -> None:
    """The failed attempts of a batch: few, so the fates one by one."""
    timeouts = [c.attempt.duration for c in failed if c.attempt.outcome is _TIMEOUT]
    failures = [c.attempt.duration for c in failed if c.attempt.outcome is not _TIMEOUT]
    s.timeout += len(timeouts)
    s.failure += len(failures)
    s.duration["timeout"].observe_many(timeouts)
    s.duration["failure"].observe_many(failures)
    s.queue_wait.observe_many(queue_waits(failed), rising=True)
    for c in failed:
        if c.retry_at is not None:
            s.retries += 1
        elif c.dead is not None:
            s.dead[c.dead.value] += 1


def queue_waits(completions: Sequence[Completion]) -> list[float]:
    """Ready to attempt start, of each, in ascending order; never below 0 (processes sharing
    a store have two clocks). Sorted first, which costs little as the waits of a batch about
    rise (far less than min() would, which compares generically) and puts any negative ones
    in front."""
    waits = [c.attempt.started_at - c.job.enqueued_at for c in completions]
    waits.sort()
    if waits and waits[0] < 0.0:
        negative = bisect_left(waits, 0.0)
        waits[:negative] = [0.0] * negative
    return waits


class ExemplarMiddleware(Middleware):
    """The exemplars of a sampled attempt (its queue wait, and its duration under its
    outcome), set while its span is current: the batch that counts it later has none.
    In the chain only while traces record, right after the tracing middleware, so that its
    after_attempt runs before the span ends."""

    def __init__(self, series: Mapping[str, PoolSeries]) -> None:
        self._series = series

    def after_attempt(self, completion: Completion, state: object) -> None:
        traceparent = current_traceparent.get()
        if traceparent is None or not int(traceparent[-2:], 16) & 1:  # not sampled
            return
        attempt = completion.attempt
        s = self._series[completion.job.pool]
        s.queue_wait.exemplar(queue_waits((completion,))[0], traceparent)
        s.duration[attempt.outcome.value].exemplar(attempt.duration, traceparent)


class Metrics:
    """The registry and every metric in it. Owned by one Dispatcher."""

    def __init__(
        self,
        settings: Settings,
        source: Source,
        *,
        store_kind: str,
        durable: Callable[[], bool] = lambda: False,
    ) -> None:
        # `base`: what prometheus_client renders; `registry`: everything, for anyone
        # collecting the usual way. /metrics renders `base` + the collector's fast text.
        self.base = CollectorRegistry()
        r = self.base
        pools = list(settings.pools)
        self.series = {name: PoolSeries() for name in pools}
        self.exemplars = ExemplarMiddleware(self.series)
        Gauge(
            "dispatcher_build_info", "Always 1; the version and store kind as labels.",
            ["version", "store"], registry=r,
        ).labels(__version__, store_kind).set(1)  # fmt: skip
        Gauge(
            "dispatcher_store_durable",
            "1 when a 2xx means fsynced to disk (sqlite synchronous full; redis appendonly "
            "with appendfsync always), else 0.",
            registry=r,
        ).set_function(lambda: float(durable()))
        self.enqueued = Counter(
            "dispatcher_messages_enqueued_total", "Accepted messages, per pool after fan-out.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "dispatcher_messages_rejected_total", "Messages refused at ingest, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.replayed = Counter(
            "dispatcher_dlq_replayed_total", "DLQ messages replayed by an operator.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.purged = Counter(
            "dispatcher_dlq_purged_total", "DLQ messages purged by an operator.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.store_seconds = Histogram(
            "dispatcher_store_operation_duration_seconds", "Store latency per operation.",
            ["operation"], buckets=STORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.http_requests = Counter(
            "dispatcher_http_requests_total", "HTTP requests by route, method and status.",
            ["handler", "method", "code"], registry=r,
        )  # fmt: skip
        self.log_messages = Counter(
            "dispatcher_log_messages_total", "Log records at warning level or above.",
            ["level"], registry=r,
        )  # fmt: skip
        self.loop_lag = Histogram(
            "dispatcher_event_loop_lag_seconds", "How late the event loop runs a timer.",
            buckets=LOOP_LAG_BUCKETS, registry=r,
        )  # fmt: skip
        # Bound once: publish and the replay/purge actions never look a label up.
        self._enqueued = {p: self.enqueued.labels(p) for p in pools}
        self._replayed = {p: self.replayed.labels(p) for p in pools}
        self._purged = {p: self.purged.labels(p) for p in pools}
        self._rejected = {reason: self.rejected.labels(reason) for reason in REJECT_REASONS}
        self._levels = {level: self.log_messages.labels(level) for level in LOG_LEVELS}
        for operation in STORE_OPERATIONS.values():
            self.store_seconds.labels(operation)
        self.log_handler = LogCounter(self._levels)
        self.collector = DispatcherCollector(source, settings.pools, self.series)
        GCCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(ProcessSnapshot(self.collector))
        self.registry = CollectorRegistry()
        self.registry.register(self.base)
        self.registry.register(self.collector)
        self._monitor = LoopMonitor(self.loop_lag)

    # --- lifecycle (with the Dispatcher's) --------------------------------------------------
    def start(self) -> None:
        self._monitor.start()
        logging.getLogger().addHandler(self.log_handler)

    async def stop(self) -> None:
        logging.getLogger().removeHandler(self.log_handler)
        await self._monitor.stop()

    async def refresh(self) -> None:
        """Update the store-derived gauges; the /metrics handler awaits this first."""
        await self.collector.refresh()

    # --- events from the Dispatcher and the HTTP edge -------------------------------------
    def completed(
        self, pool: str, delivered: Sequence[Completion], failed: Sequence[Completion]
    ) -> None:
        """After the acker wrote a batch: the attempts of `pool` in it, split by outcome."""
        count_completions(self.series[pool], delivered, failed)

    def published(self, wanted: Mapping[str, int], duplicates: Sequence[Accepted]) -> None:
        """After a committed batch: `wanted` jobs per pool, less those of its `duplicates`
        (which the publisher finds anyway: no pass over the batch here)."""
        enqueued = dict(wanted)
        for accepted in duplicates:
            for pool in accepted.pools:
                enqueued[pool] -= 1
        for pool, n in enqueued.items():
            if n:
                self._enqueued[pool].inc(n)
        if duplicates:
            self._rejected["duplicate"].inc(len(duplicates))

    def reject(self, reason: str, n: int = 1) -> None:
        child = self._rejected.get(reason)
        if child is not None:  # an unknown reason would be an unbounded label: drop it
            child.inc(n)

    def dlq_replayed(self, per_pool: Mapping[str, int]) -> None:
        _count(self._replayed, per_pool)

    def dlq_purged(self, per_pool: Mapping[str, int]) -> None:
        _count(self._purged, per_pool)


def _count(children: Mapping[str, Counter], per_pool: Mapping[str, int]) -> None:
    for pool, n in per_pool.items():
        child = children.get(pool)  # a pool removed from config may still hold DLQ entries
        if child is not None and n:
            child.inc(n)


class LogCounter(logging.Handler):
    """dispatcher_log_messages_total{level}: every warning or error logged has a count.
    Attached to the root logger while its Dispatcher runs."""

    def __init__(self, levels: Mapping[str, Counter]) -> None:
        super().__init__(logging.WARNING)
        self._levels = levels

    def emit(self, record: logging.LogRecord) -> None:
        child = self._levels.get(record.levelname.lower())
        if child is not None:
            child.inc()
