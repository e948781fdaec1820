"""Operator actions: live pool overrides, the dead-letter queue, and the audit log of both.

An override (rate, burst, concurrency, paused) applies at once and is saved in the store, so
a restart applies it again (`apply_overrides` at start); a reset goes back to the config. A
circuit opened or closed by hand is not saved: breaker state is per process, and a process
starts with it closed. DLQ replay sends dead messages back to their pools with fresh
attempts, purge deletes them, and an edited replay enqueues a corrected copy under a new id.
Every change is audited with the actor; a bulk action that fails part-way audits the part
that was done, and raises. What the dispatcher does by itself (a circuit breaker's moves) is
audited too, with the actor `system`, by a task of its own so the pool never waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from .admission import Admission
from .circuit import CircuitState
from .errors import NotFound, PartlyDone, StoreError, Unavailable
from .message import AuditEntry, DlqFilter, IdGenerator, Message, NewMessage
from .observe.metrics import Metrics
from .pool import Pool
from .stores.base import Store

log = logging.getLogger("dispatcher")

SYSTEM = "system"  # the actor of what the dispatcher does by itself


def overrides_of(pool: Pool) -> dict[str, Any]:
    """The pool's live settings that differ from its config."""
    cfg = pool.config
    out: dict[str, Any] = {}
    if pool.rate != cfg.rate:
        out["rate"] = pool.rate
    if pool.burst != cfg.effective_burst:
        out["burst"] = pool.burst
    if pool.concurrency != cfg.concurrency:
        out["concurrency"] = pool.concurrency
    if pool.paused:
        out["paused"] = True
    return out


def apply_overrides(pool: Pool, overrides: Mapping[str, Any], *, starting: bool = False) -> None:
    cfg = pool.config
    rate = overrides.get("rate", cfg.rate)
    burst = overrides.get("burst")
    if burst is None:  # the default burst follows the rate in force, overridden or not
        burst = msgspec.structs.replace(cfg, rate=rate).effective_burst
    pool.configure(
        rate=rate,
        burst=int(burst),
        concurrency=int(overrides.get("concurrency", cfg.concurrency)),
    )
    if starting and overrides.get("paused"):
        pool.paused = True  # nothing claimed yet; at run time set_paused() does the work


class Actions:
    def __init__(
        self,
        store: Store,
        pools: Mapping[str, Pool],
        admission: Admission,
        metrics: Metrics,
        *,
        clock: Callable[[], float],
        ids: IdGenerator,
        check_open: Callable[[], None],
    ) -> None:
        self._store = store
        self._pools = pools  # the Dispatcher's live pools, filled at start
        self._admission = admission
        self._metrics = metrics
        self._clock = clock
        self._ids = ids
        self._check_open = check_open  # raises Unavailable while not started or draining
        self._system: list[AuditEntry] = []  # the system's entries not written yet
        self._system_queued = asyncio.Event()
        self._system_writer: asyncio.Task[None] | None = None

    # --- pool overrides ------------------------------------------------------------------
    async def update_pool(self, pool: Pool, changes: dict[str, Any], *, actor: str) -> None:
        settings = {key: value for key, value in changes.items() if key != "circuit"}
        if settings:
            overrides = {**overrides_of(pool), **settings}
            await self._store.save_pool_settings(pool.name, overrides)
            apply_overrides(pool, overrides)
            if "paused" in settings:
                await pool.set_paused(bool(settings["paused"]))
        if "circuit" in changes:  # never saved: see the module docstring
            opened = changes["circuit"] == "open"
            pool.gate.set_circuit(opened, f"{'opened' if opened else 'closed'} by {actor}")
        await self._audit(actor, "pool.update", pool.name, changes)

    async def adopt(self, saved: Mapping[str, Mapping[str, Any]]) -> None:
        """Take over the overrides another process saved (a shared store): each pool whose
        live settings differ from its saved ones is set to them, unaudited (the process that
        made the change audited it)."""
        for name, pool in self._pools.items():
            wanted = dict(saved.get(name, {}))
            if wanted == overrides_of(pool):
                continue
            apply_overrides(pool, wanted)
            paused = bool(wanted.get("paused"))
            if paused != pool.paused:
                await pool.set_paused(paused)

    async def reset_pool(self, pool: Pool, *, actor: str) -> None:
        await self._store.save_pool_settings(pool.name, {})
        apply_overrides(pool, {})
        await pool.set_paused(False)
        await self._audit(actor, "pool.reset", pool.name, {})

    # --- dead letters --------------------------------------------------------------------
    async def dlq_replay(self, selector: DlqFilter, *, actor: str, rate: float | None) -> int:
        interval = 1.0 / rate if rate else 0.0
        target = _describe(selector)
        try:
            replayed = await self._store.dlq_replay(selector, self._clock(), interval)
        except PartlyDone as exc:
            # The chunks committed before the failure are back in their pools: reserve
            # their backlog (each completion will release it), count and audit them.
            self._requeued(exc.done, interval)
            await self._audit_partly(actor, "dlq.replay", target, {"rate": rate}, exc)
            raise
        self._requeued(replayed, interval)
        total = sum(replayed.values())
        await self._audit(actor, "dlq.replay", target, {"rate": rate}, total)
        return total

    def _requeued(self, replayed: Mapping[str, int], interval: float) -> None:
        self._metrics.dlq_replayed(replayed)
        for name, n in replayed.items():
            if self._admission.readmit(name, n):
                self._pools[name].notify()
                if interval:
                    self._pools[name].notify(self._clock() + interval)

    async def dlq_purge(self, selector: DlqFilter, *, actor: str) -> int:
        try:
            purged = await self._store.dlq_purge(selector)
        except PartlyDone as exc:
            self._metrics.dlq_purged(exc.done)
            await self._audit_partly(actor, "dlq.purge", _describe(selector), {}, exc)
            raise
        self._metrics.dlq_purged(purged)
        total = sum(purged.values())
        await self._audit(actor, "dlq.purge", _describe(selector), {}, total)
        return total

    async def dlq_replay_edited(
        self, message_id: str, pool: Pool, payload: bytes, *, actor: str
    ) -> str:
        selector = DlqFilter(ids=(message_id,), pool=pool.name)
        entries, _ = await self._store.dlq_list(selector, 1)
        if not entries:
            raise NotFound(f"no dead message {message_id!r} in pool {pool.name!r}")
        self._check_open()
        old = entries[0].message
        now = self._clock()
        headers = {**old.headers, "dispatcher-replay-of": old.id}
        new = Message(self._ids(), old.tag, payload, now, old.priority, now, headers, old.trace)
        self._admission.reserve({pool.name: 1})
        try:
            await self._store.enqueue([NewMessage(new, (pool.name,))])
        except StoreError as exc:
            self._admission.cancel({pool.name: 1})
            raise Unavailable(f"the store is unavailable: {exc}", retry_after=5.0) from exc
        self._admission.committed({pool.name: 1})
        pool.notify()
        # One replay as far as dispatcher_dlq_replayed_total goes: the old entry's removal is
        # part of it, not an operator purge.
        self._metrics.dlq_replayed({pool.name: 1})
        target = f"{message_id} ({pool.name})"
        detail: dict[str, Any] = {"new_id": new.id}
        try:
            await self._store.dlq_purge(selector)
        except StoreError as exc:
            # The new message is committed and on its way: answer with it. An error would
            # invite a retry, and a retry would send it again under yet another id. The old
            # entry stays in the DLQ, and the audit entry says why.
            log.warning("replayed %s as %s, but the old entry stays: %s", target, new.id, exc)
            detail["purge_error"] = str(exc)
        await self._audit_best_effort(actor, "dlq.edit_replay", target, detail, 1)
        return new.id

    # --- what the dispatcher does by itself --------------------------------------------
    def circuit_changed(self, pool: str, state: CircuitState, reason: str) -> None:
        """A pool's breaker moved by itself (the pool has logged it): audit it as the
        system's action. Called on the pool's hot path, so it only queues the entry."""
        detail: dict[str, object] = {"circuit": state.name.lower(), "reason": reason}
        self._system.append(AuditEntry(self._clock(), SYSTEM, "pool.circuit", pool, detail))
        self._system_queued.set()

    def start(self) -> None:
        self._system_writer = asyncio.create_task(self._write_system(), name="audit:system")

    async def stop(self) -> None:
        """Write what is queued, then end the writer (before the store closes)."""
        task, self._system_writer = self._system_writer, None
        if task is None:
            return
        self._system_queued.set()
        try:
            async with asyncio.timeout(5.0):
                await asyncio.shield(task)
        except TimeoutError:  # a store that does not answer: the moves are in the log
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _write_system(self) -> None:
        while True:
            await self._system_queued.wait()
            self._system_queued.clear()
            await self._flush_system()
            if self._system_writer is None:  # stop() asked
                return

    async def _flush_system(self) -> None:
        entries, self._system = self._system, []
        for entry in entries:
            try:
                await self._store.audit(entry)
            except StoreError as exc:  # the transition itself is logged already
                log.warning(
                    "audit: %s %s %s (not stored: %s)", entry.actor, entry.action, entry.target, exc
                )

    # --- audit ---------------------------------------------------------------------------
    async def _audit(
        self, actor: str, action: str, target: str, detail: dict[str, Any], count: int | None = None
    ) -> None:
        entry = AuditEntry(self._clock(), actor, action, target, detail, count)
        await self._store.audit(entry)
        log.info("audit: %s %s %s %s", actor, action, target, detail)

    async def _audit_partly(
        self, actor: str, action: str, target: str, detail: dict[str, Any], exc: PartlyDone
    ) -> None:
        """Audit the part of a bulk action that was done before it failed."""
        detail = {**detail, "error": str(exc)}
        await self._audit_best_effort(actor, action, target, detail, sum(exc.done.values()))

    async def _audit_best_effort(
        self, actor: str, action: str, target: str, detail: dict[str, Any], count: int
    ) -> None:
        """Audit an action that is done whatever happens next: a store that refuses the
        entry (it may just have failed the action itself) gets a log line instead."""
        try:
            await self._audit(actor, action, target, detail, count)
        except StoreError as exc:
            log.warning("audit: %s %s %s %s (not stored: %s)", actor, action, target, detail, exc)


def _describe(selector: DlqFilter) -> str:
    if selector.ids is not None:
        return f"{len(selector.ids)} ids"
    parts = [
        f"{k}={v}"
        for k, v in (
            ("pool", selector.pool),
            ("tag", selector.tag),
            ("error", selector.error),
            ("since", selector.since),
        )
        if v is not None
    ]
    return " ".join(parts) or "all"
