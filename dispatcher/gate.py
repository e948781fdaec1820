"""The gate in front of a pool's attempts: the circuit breaker (circuit.py), the hold a
receiver's Retry-After asks for (hold.py) and the adaptive concurrency limit (adaptive.py),
consulted together, with the pool's monotonic clock.

The pool reads two plain attributes per attempt: `gated` (the circuit is not closed, or a
hold may still run) and `limit` (the effective concurrency; workers above it park). Only a
gated pool asks `admit()` before an attempt, and only with the breaker or adaptive enabled
does `after()` cost anything: both are O(1) and allocate nothing.

While the gate is shut (circuit open, or held), the pool claims nothing, hands its window
back to the store and starts no attempt, so its messages wait without spending attempts.
Every move of the gate calls the pool's `moved` (to wake its feeder and workers); the
breaker's own transitions also go to `on_circuit` (the Dispatcher audits them as the
system's action), an operator's (`set_circuit`) are audited by the caller.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from .adaptive import AdaptiveLimit
from .circuit import REFUSED, Breaker, CircuitState
from .config import PoolConfig
from .hold import Hold

log = logging.getLogger("dispatcher.pool")

#: seconds a worker turned away waits before it asks again, at most (a move wakes it sooner)
POLL = 1.0
_CLOSED = CircuitState.CLOSED


class Gate:
    def __init__(
        self,
        pool: str,
        config: PoolConfig,
        monotonic: Callable[[], float],
        *,
        moved: Callable[[], None],
        on_circuit: Callable[[str, CircuitState, str], None] | None = None,
    ) -> None:
        self.pool = pool
        self._monotonic = monotonic
        self._moved = moved
        self._on_circuit = on_circuit
        self._max_hold = config.circuit.max_hold
        self.breaker = Breaker(config.circuit, self._circuit_changed)
        self.breaker_on = config.circuit.enabled
        self.hold = Hold()
        self.adaptive = (
            AdaptiveLimit(config.adaptive.min_concurrency, config.concurrency, monotonic())
            if config.adaptive.enabled
            else None
        )
        self.limit = config.concurrency if self.adaptive is None else self.adaptive.limit
        self.gated = False
        self._changed = asyncio.Event()

    # --- what the pool reads -----------------------------------------------------------------
    def wait(self, now: float) -> float:
        """Seconds until attempts may start (0: now; inf: until the circuit is closed by
        hand). Half-open counts as now: the probes decide."""
        held = self.hold.until - now
        wait = self.breaker.wait(now)
        return held if held > wait else wait

    def admit(self) -> int:
        """Before an attempt of a gated pool: REFUSED, PASS or a probe's ticket."""
        now = self._monotonic()
        if now < self.hold.until:
            return REFUSED
        breaker = self.breaker
        ticket = breaker.admit(now)
        if breaker.state is _CLOSED:
            self.gated = False
        return ticket

    async def turned_away(self) -> None:
        """A worker the gate refused waits for a move of the gate (or a while)."""
        wait = self.wait(self._monotonic())
        if wait > 0.0:
            self._moved()  # the job the worker put back must go back to the store too
        changed = self._changed
        try:
            async with asyncio.timeout(min(wait, POLL) if wait > 0.0 else POLL):
                await changed.wait()
        except TimeoutError:
            pass

    async def parked(self) -> None:
        """A worker above the limit waits until the limit (or anything else) moves."""
        await self._changed.wait()

    def signal(self) -> None:
        """Wake the workers waiting on the gate: it moved, or the pool stops."""
        self._changed.set()
        self._changed = asyncio.Event()

    # --- what the pool tells --------------------------------------------------------------
    def hold_for(self, seconds: float) -> float:
        """The receiver asked for no attempt within `seconds` (a 429 or 503 with
        Retry-After): hold the pool, up to circuit.max_hold. Answers the delay of the
        message that got the answer: the hold, so its retry comes when the pool resumes."""
        if self._max_hold <= 0.0:
            return seconds  # holding is off: the Retry-After is this message's alone
        hold = self.hold
        before = hold.until
        now = self._monotonic()
        granted = hold.extend(now, seconds, self._max_hold)
        if hold.until > before:
            if before <= now:
                log.warning("pool %s: held for %gs by a Retry-After", self.pool, granted)
            self.gated = True
            self._moved()
        return granted

    def after(
        self,
        ticket: int,
        started: float,
        ended: float,
        failed: bool,
        overloaded: bool,
        in_flight: int,
    ) -> None:
        """The outcome of an attempt: `failed` (retryable: a permanent failure is the
        message's fault, not the receiver's), `overloaded` (a 429, a 503, a timeout)."""
        if self.breaker_on:
            self.breaker.record(ended, failed, ticket)
        adaptive = self.adaptive
        if adaptive is not None:
            limit = adaptive.record(ended, started, ended - started, overloaded, in_flight)
            if limit != self.limit:
                grew = limit > self.limit
                self.limit = limit
                if grew:
                    self.signal()  # parked workers may run

    def configure(self, concurrency: int) -> None:
        """The pool's concurrency changed: the ceiling of the adaptive limit."""
        adaptive = self.adaptive
        self.limit = concurrency if adaptive is None else adaptive.configure(concurrency)
        self.signal()

    def set_circuit(self, open: bool, reason: str) -> bool:
        """An operator opens the circuit (until closed by hand) or closes it; False when it
        was so already. The caller audits it."""
        if not self.breaker.force(self._monotonic(), open, reason):
            return False
        self._circuit_changed(self.breaker.state, reason, by_hand=True)
        return True

    def _circuit_changed(self, state: CircuitState, reason: str, by_hand: bool = False) -> None:
        now = self._monotonic()
        if state is CircuitState.OPEN:
            wait = self.breaker.wait(now)
            until = "until closed by hand" if wait == math.inf else f"for {wait:g}s"
            log.warning("pool %s: circuit open %s: %s", self.pool, until, reason)
        else:
            log.info("pool %s: circuit %s: %s", self.pool, state.name.lower(), reason)
        self.gated = state is not _CLOSED or self.hold.until > now
        self.signal()
        self._moved()
        if self._on_circuit is not None and not by_hand:
            self._on_circuit(self.pool, state, reason)
