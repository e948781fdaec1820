"""The Dispatcher: owns the store, the router, the pools and their lifecycle.

Its public methods are the one way in for every edge: the HTTP API, the console and the CLI
call the same `publish`, `pool`, `update_pool`, `dlq_*` methods, so they cannot drift apart.
It keeps the lifecycle and the status reads, and hands the rest to its parts: `publisher`
(ingest: route, admit, commit), `admission` (room in a pool's backlog, Retry-After),
`actions` (operator changes and their audit log) and `housekeeping` (free disk space,
expiry).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random as _random
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from opentelemetry.trace import TracerProvider

from .acker import Acker
from .actions import Actions, apply_overrides, overrides_of
from .admission import Admission
from .circuit import CircuitState
from .config import Settings
from .errors import NotFound, Rejected, StoreError, Unavailable
from .following import SettingsFollower
from .housekeeping import Housekeeper
from .message import (
    Accepted,
    AuditEntry,
    Completion,
    DlqEntry,
    DlqFilter,
    IdGenerator,
    MessageStatus,
    Outcome,
    PoolCounts,
    PoolInfo,
    Publish,
)
from .middleware import Chain, Middleware
from .observe.logs import log_failure
from .observe.metrics import STORE_OPERATIONS, Metrics
from .observe.tracing import Tracing
from .pool import Pool
from .publisher import Publisher
from .routing import Router
from .sinks import SinkContext, build_sink
from .sinks.base import Sink
from .stores import Store, open_store
from .stores.base import SessionStore
from .stores.instrumented import InstrumentedStore

log = logging.getLogger("dispatcher")

_UNSET: Any = object()
_SUCCESS = Outcome.SUCCESS


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        sinks: Mapping[str, Sink] | None = None,
        middleware: Sequence[Middleware] = (),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
        observability: bool = True,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or open_store(
            settings.store.url,
            synchronous=settings.store.synchronous,
            prefix=settings.store.prefix,
            lease=settings.store.lease,
            consumer=_consumer_name(settings.server.port),
        )
        self.router = Router((r.match, r.pools) for r in settings.routes)
        self.sink_context = SinkContext(settings.security)
        self._sink_overrides = dict(sinks or {})
        self._middleware = list(middleware)
        self._clock = clock
        self._monotonic = monotonic  # the pools' clock for durations: pace, tokens, timeouts
        self._random = random
        self._ids = IdGenerator()
        self.pools: dict[str, Pool] = {}
        self._sinks: dict[str, Sink] = {}
        self._attempt_totals: dict[str, list[int]] = {}  # per pool: [succeeded, failed]
        self._acker: Acker | None = None
        self.draining = False
        self.started = False
        # Observers cost an attempt nothing they can do elsewhere: metrics count each batch
        # of outcomes the acker wrote (`_applied`), a worker's log context is set once per
        # worker (pool.py), and a failed attempt's log line is each pool's `on_failure`. Only
        # while traces record do attempts pass through middleware: the span around each (it
        # is current for the user's middleware and the sink) and the metric exemplars that
        # need it. `observability=False` leaves the engine bare (the overhead benchmark's
        # baseline).
        self._observe = observability
        self.metrics = Metrics(
            settings, self, store_kind=self.store.kind, durable=lambda: self.store.durable
        )
        self.tracing = Tracing(tracer_provider, enabled=observability)
        if observability:
            self.store = InstrumentedStore(self.store, self.metrics.store_seconds, STORE_OPERATIONS)
            if self.tracing.live:
                self._middleware[:0] = [self.tracing.middleware, self.metrics.exemplars]
        self._admission = Admission(self.pools)
        self._actions = Actions(
            self.store,
            self.pools,
            self._admission,
            self.metrics,
            clock=clock,
            ids=self._ids,
            check_open=self._check_open,
        )
        self._housekeeper = Housekeeper(self.store, settings.store, clock)
        self._follower = SettingsFollower(self.store, self._follow)
        self._publisher = Publisher(
            self.store,
            self.router,
            self.pools,
            self._admission,
            self.metrics if observability else None,
            dedup_window=settings.store.dedup_window,
            clock=clock,
            ids=self._ids,
            check_open=self._check_ingest,
        )

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        requeued = await self.store.open()
        if requeued:
            log.warning("requeued %d jobs left in flight by a previous run", requeued)
        counts = await self.store.counts(self._clock())
        overrides = await self.store.load_pool_settings()
        self._acker = Acker(self.store, self._applied)
        chain = Chain(self._middleware)
        for name, config in self.settings.pools.items():
            sink = self._sink_overrides.get(name) or build_sink(
                name, config.sink, self.sink_context
            )
            await sink.start()
            self._sinks[name] = sink
            pool = Pool(
                name,
                config,
                self.store,
                sink,
                self._acker,
                clock=self._clock,
                monotonic=self._monotonic,
                random=self._random,
                chain=chain,
                on_circuit=self._actions.circuit_changed,
                on_failure=log_failure if self._observe else None,
            )
            apply_overrides(pool, overrides.get(name, {}), starting=True)
            c = counts.get(name, PoolCounts())
            self._admission.outstanding[name] = c.ready + c.scheduled + c.claimed
            self._attempt_totals[name] = [0, 0]
            self.pools[name] = pool
        self._acker.start()
        self._actions.start()
        for pool in self.pools.values():
            pool.start()
        self._housekeeper.start()
        if self.store.shared:
            self._follower.start()
        if self._observe:
            self.metrics.start()
        self.started = True

    async def stop(self, grace: float | None = None) -> None:
        """Drain: refuse ingest, finish running attempts within `grace` seconds (default
        server.grace_period), leave everything else queued in the store, close."""
        if not self.started:
            return
        self.draining = True
        grace = self.settings.server.grace_period if grace is None else grace
        pools = list(self.pools.values())
        await asyncio.gather(*(p.stop_claiming() for p in pools))
        # The grace period bounds real waits: it runs on the event loop's clock, not on the
        # pools' injectable one.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        for pool in pools:
            if not await pool.wait_idle(max(0.0, deadline - loop.time())):
                log.warning("pool %s: attempts still running after the grace period", pool.name)
        abandoned = [job for pool in pools for job in await pool.abort()]
        assert self._acker is not None
        await self._acker.flush(timeout=max(5.0, grace))
        await self._acker.stop()
        if abandoned:
            try:
                await self.store.release(abandoned)
            except StoreError:
                log.exception("could not release %d abandoned jobs", len(abandoned))
        await self._actions.stop()  # the system's audit entries, before the store closes
        await self._housekeeper.stop()
        await self._follower.stop()
        for sink in self._sinks.values():
            try:
                await sink.close()
            except Exception:
                log.exception("closing a sink failed")
        await self.sink_context.close()
        await self.store.close()
        if self._observe:
            await self.metrics.stop()
        self.started = False

    async def ready(self) -> bool:
        """Ready for traffic: started, not draining, and the store answers."""
        if not self.started or self.draining:
            return False
        try:
            return await self.store.ping()
        except StoreError:
            return False

    # --- ingest (publisher.py) ------------------------------------------------------------
    async def publish(self, items: Sequence[Publish]) -> list[Accepted]:
        """Route, check capacity and commit `items` all-or-nothing (Publisher.publish_all);
        traced with a PRODUCER span per message when a tracer provider records."""
        if self.tracing.live:
            return await self.tracing.traced_publish(self._publisher.publish_all, items)
        return await self._publisher.publish_all(items)

    async def publish_each(self, items: Sequence[Publish]) -> list[Accepted | Rejected]:
        """Commit single messages of independent producers together, each answered as if
        it came alone (Publisher.publish_each). Not traced here: each producer starts its
        PRODUCER span in its own context (Tracing.start_send), where its parent is current."""
        return await self._publisher.publish_each(items)

    def _check_ingest(self) -> None:
        self._check_open()
        if self._housekeeper.disk_low:
            raise Unavailable("free disk space is below store.min_free_bytes", retry_after=30.0)

    @property
    def shared_sessions(self) -> SessionStore | None:
        """Where the console keeps its sessions when several processes share the store (so
        that any instance serves any operator); None when sessions stay in this process."""
        return self.store.sessions

    async def _follow(self, saved: Mapping[str, Mapping[str, object]]) -> None:
        """A tick of the follower (shared stores): what other processes changed."""
        await self._actions.adopt(saved)
        counts = await self.store.counts(self._clock())
        self._admission.resync({p: c.ready + c.scheduled + c.claimed for p, c in counts.items()})

    def _check_open(self) -> None:
        if self.draining or not self.started:
            raise Unavailable("the dispatcher is shutting down", retry_after=5.0)

    def _applied(self, completions: Sequence[Completion]) -> None:
        """After the acker wrote a batch: update backlog counts, wake pools for retries, then
        count the attempts in the metrics (last: an observer that raised would leave the
        backlog counts right; the acker logs it)."""
        groups = _by_pool(completions)
        outstanding = self._admission.outstanding
        for pool, delivered, failed in groups:
            finished = len(delivered)
            for c in failed:
                if c.retry_at is not None:
                    self.pools[pool].notify(c.retry_at)
                else:
                    finished += 1
            outstanding[pool] -= finished
            totals = self._attempt_totals[pool]
            totals[0] += len(delivered)
            totals[1] += len(failed)
        if self._observe:
            for group in groups:
                self.metrics.completed(*group)

    # --- status --------------------------------------------------------------------------
    async def get_message(self, message_id: str) -> MessageStatus | None:
        return await self.store.get_message(message_id)

    def pool_names(self) -> list[str]:
        return list(self.pools)

    async def pool_infos(self) -> list[PoolInfo]:
        counts = await self.store.counts(self._clock())
        return [self._info(p, counts.get(p.name, PoolCounts())) for p in self.pools.values()]

    async def pool_info(self, name: str) -> PoolInfo:
        pool = self._pool(name)
        counts = await self.store.counts(self._clock())
        return self._info(pool, counts.get(name, PoolCounts()))

    def _info(self, pool: Pool, c: PoolCounts) -> PoolInfo:
        now = self._clock()
        gate = pool.gate
        state = gate.breaker.state
        monotonic = self._monotonic()
        half_open_in = gate.breaker.wait(monotonic) if state == CircuitState.OPEN else None
        return PoolInfo(
            name=pool.name,
            paused=pool.paused,
            rate=pool.rate,
            burst=pool.burst,
            concurrency=pool.concurrency,
            # claimed but not running: the in-memory window and outcomes being written
            backlog=c.ready + max(0, c.claimed - pool.busy),
            in_flight=pool.busy,
            scheduled=c.scheduled,
            dlq=c.dead,
            oldest_age_seconds=max(0.0, now - c.oldest_at) if c.oldest_at is not None else 0.0,
            max_backlog=pool.config.max_backlog,
            timeout=pool.config.timeout,
            sink=pool.config.sink.__struct_config__.tag,  # type: ignore[arg-type]
            overrides=overrides_of(pool),
            circuit=state.name.lower(),  # type: ignore[arg-type]  # the names are the values
            circuit_enabled=gate.breaker_on,
            circuit_reason=gate.breaker.reason,
            half_open_in_seconds=None if half_open_in == math.inf else half_open_in,
            hold_seconds=gate.hold.remaining(monotonic),
            effective_concurrency=pool.limit,
            adaptive_enabled=gate.adaptive is not None,
        )

    def attempt_totals(self) -> dict[str, tuple[int, int]]:
        """Per pool: attempts that succeeded and that failed since start (written ones), from
        which the console derives throughput and failure rates."""
        return {pool: (t[0], t[1]) for pool, t in self._attempt_totals.items()}

    def _pool(self, name: str) -> Pool:
        try:
            return self.pools[name]
        except KeyError:
            raise NotFound(f"no pool named {name!r}") from None

    # --- operator actions (changes in actions.py; reads straight from the store) ---------
    async def update_pool(
        self,
        name: str,
        *,
        actor: str,
        rate: float | None = _UNSET,
        burst: int = _UNSET,
        concurrency: int = _UNSET,
        paused: bool = _UNSET,
        circuit: Literal["open", "closed"] = _UNSET,
    ) -> PoolInfo:
        """Change a pool's throttle or pause it; applies at once, persists, is audited.
        `rate=None` means unlimited. `circuit` opens the pool's circuit breaker (until
        closed by hand) or closes it; audited, but per process: never persisted."""
        pool = self._pool(name)
        given = {
            "rate": rate,
            "burst": burst,
            "concurrency": concurrency,
            "paused": paused,
            "circuit": circuit,
        }
        changes = {key: value for key, value in given.items() if value is not _UNSET}
        await self._actions.update_pool(pool, changes, actor=actor)
        return await self.pool_info(name)

    async def reset_pool(self, name: str, *, actor: str) -> PoolInfo:
        """Back to the configured rate, burst and concurrency, and running."""
        await self._actions.reset_pool(self._pool(name), actor=actor)
        return await self.pool_info(name)

    async def dlq_list(
        self, selector: DlqFilter, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[DlqEntry], str | None]:
        return await self.store.dlq_list(selector, limit, cursor)

    async def dlq_count(self, selector: DlqFilter) -> int:
        return await self.store.dlq_count(selector)

    async def dlq_replay(
        self,
        selector: DlqFilter,
        *,
        actor: str,
        dry_run: bool = False,
        rate: float | None = None,
    ) -> int:
        """Send dead messages back to their pools with fresh attempts; `rate` spreads them
        out (messages per second) so a recovered downstream is not flooded."""
        if dry_run:
            return await self.store.dlq_count(selector)
        return await self._actions.dlq_replay(selector, actor=actor, rate=rate)

    async def dlq_purge(self, selector: DlqFilter, *, actor: str, dry_run: bool = False) -> int:
        if dry_run:
            return await self.store.dlq_count(selector)
        return await self._actions.dlq_purge(selector, actor=actor)

    async def dlq_replay_edited(
        self, message_id: str, pool: str, payload: bytes, *, actor: str
    ) -> str:
        """Replay one dead entry with a corrected payload. Message ids are immutable (dedup,
        webhook-id), so this enqueues a new message to `pool` only, with a fresh id and the
        header `dispatcher-replay-of: <old id>` as lineage, then purges the old entry.
        Returns the new id."""
        target = self._pool(pool)  # NotFound for a pool no longer configured: nowhere to send it
        return await self._actions.dlq_replay_edited(message_id, target, payload, actor=actor)

    async def audit_list(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[AuditEntry], str | None]:
        return await self.store.audit_list(limit, cursor)


def _by_pool(
    completions: Sequence[Completion],
) -> list[tuple[str, Sequence[Completion], Sequence[Completion]]]:
    """A batch of outcomes per pool: (pool, delivered, failed). A list comprehension or two
    for the usual batch (one busy pool, every attempt delivered), not a loop in Python."""
    pools = {c.job.pool for c in completions}
    if len(pools) == 1:
        batches: Iterable[tuple[str, Sequence[Completion]]] = ((pools.pop(), completions),)
    else:
        grouped: dict[str, list[Completion]] = {pool: [] for pool in pools}
        for c in completions:
            grouped[c.job.pool].append(c)
        batches = grouped.items()
    groups: list[tuple[str, Sequence[Completion], Sequence[Completion]]] = []
    for pool, batch in batches:
        delivered = [c for c in batch if c.attempt.outcome is _SUCCESS]
        failed: list[Completion] = []
        if len(delivered) < len(batch):
            failed = [c for c in batch if c.attempt.outcome is not _SUCCESS]
        groups.append((pool, delivered, failed))
    return groups


def _consumer_name(port: int) -> str:
    """This process's name among those sharing a store: stable across its restarts (host
    and port), so that a restarted process takes its own claims back at once; the pid where
    the port is picked at random (0)."""
    return f"{socket.gethostname()}:{port or f'pid{os.getpid()}'}"
