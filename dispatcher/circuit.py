"""The circuit breaker of a pool: a pure policy, with the (monotonic) clock passed in.

    closed ──too many failures in the window──▶ open ──cooldown over──▶ half-open
      ▲                                           ▲                        │
      ├────────────── every probe succeeded ──────┼────────────────────────┤
      │                                           └─ a probe failed: open again, the
      └─ closed by hand                              cooldown 1.5 times longer (capped)

Closed: every attempt goes through and its outcome is counted in a sliding window of
`window` seconds, kept as ten buckets so that counting is O(1) and allocates nothing. Once
the window holds `min_attempts` and at least `failure_ratio` of them failed, the circuit
opens. Open: nothing goes through until the cooldown is over. Half-open: `probes` attempts
go through; when they all succeed the circuit closes (the window emptied, the cooldown back
to its configured value), when one fails it opens again for longer, up to `max_cooldown`.

The caller asks `admit(now)` before an attempt and hands the answer (a ticket) back with the
outcome to `record`. Tickets tell probes apart: an outcome that describes the past (an
attempt let through before the circuit opened, or a probe of an earlier half-open period)
changes nothing. What counts as a failure is the caller's call: the pool counts timeouts
and retryable failures, never a permanent one (that is the message's fault).

Opened by hand, the circuit stays open (no probes) until it is closed by hand. The state is
a process's own and starts closed.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

from .config import CircuitConfig

BUCKETS = 10
#: a failed probe opens the circuit again for this many times the previous cooldown
COOLDOWN_GROWTH = 1.5

#: admit()'s answers: no attempt now; an ordinary attempt; a probe is any ticket above PASS
REFUSED = 0
PASS = 1


class CircuitState(enum.IntEnum):
    """The values of `dispatcher_pool_circuit_state`."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


_CLOSED, _HALF_OPEN, _OPEN = CircuitState.CLOSED, CircuitState.HALF_OPEN, CircuitState.OPEN


class Breaker:
    __slots__ = ("_attempts", "_bucket_end", "_config", "_cooldown", "_failed", "_failures",
                 "_manual", "_on_change", "_probe_ok", "_probes_out", "_slot", "_ticket",
                 "_total", "_width", "open_until", "opened", "reason", "state")  # fmt: skip

    def __init__(
        self, config: CircuitConfig, on_change: Callable[[CircuitState, str], None]
    ) -> None:
        self._config = config
        self._on_change = on_change  # told of every change the breaker makes by itself
        self.state = _CLOSED
        self.reason = "starts closed"
        self.opened = 0  # times opened since start (dispatcher_circuit_opened_total)
        self.open_until = 0.0  # while open: when probes may start (inf: opened by hand)
        self._manual = False
        self._cooldown = config.cooldown
        self._width = config.window / BUCKETS
        self._attempts = [0] * BUCKETS
        self._failures = [0] * BUCKETS
        self._slot = 0  # the current bucket
        self._bucket_end = -math.inf  # when the current bucket's time is over
        self._total = self._failed = 0
        self._ticket = PASS  # the current half-open period's probe ticket
        self._probes_out = self._probe_ok = 0

    # --- before an attempt -----------------------------------------------------------------
    def admit(self, now: float) -> int:
        """May an attempt start now? REFUSED, PASS, or a probe's ticket (above PASS)."""
        state = self.state
        if state is _CLOSED:
            return PASS
        if state is _OPEN:
            if now < self.open_until:
                return REFUSED
            self._change(_HALF_OPEN, f"cooldown of {self._cooldown:g}s over: probing")
        if self._probes_out >= self._config.probes:
            return REFUSED  # the probes are out: wait for their outcome
        self._probes_out += 1
        return self._ticket

    def wait(self, now: float) -> float:
        """Seconds until attempts may start again: 0 unless open; inf when opened by hand."""
        if self.state is not _OPEN:
            return 0.0
        return max(0.0, self.open_until - now)

    # --- after an attempt ------------------------------------------------------------------
    def record(self, now: float, failed: bool, ticket: int) -> None:
        """The outcome of an attempt that `admit` let through with `ticket`."""
        state = self.state
        if state is _CLOSED:
            if now >= self._bucket_end:
                self._advance(now)
            slot = self._slot
            self._attempts[slot] += 1
            self._total += 1
            if failed:
                self._failures[slot] += 1
                self._failed += 1
                config = self._config
                if (
                    self._total >= config.min_attempts
                    and self._failed >= config.failure_ratio * self._total
                ):
                    reason = (
                        f"{self._failed} of the last {self._total} attempts failed "
                        f"(within {config.window:g}s)"
                    )
                    self._open(now, reason)
        elif state is _HALF_OPEN and ticket == self._ticket:
            if failed:
                self._cooldown = min(self._config.max_cooldown, self._cooldown * COOLDOWN_GROWTH)
                self._open(now, "a probe failed")
            else:
                self._probe_ok += 1
                if self._probe_ok >= self._config.probes:
                    self._close()
                    self._change(_CLOSED, f"{self._probe_ok} probe(s) succeeded")

    def _advance(self, now: float) -> None:
        """Move to the bucket of `now`, emptying the buckets whose time has passed."""
        width = self._width
        if now - self._bucket_end >= width * BUCKETS:
            steps = BUCKETS  # the whole window is stale (or this is the first attempt)
            self._bucket_end = now + width
        else:
            steps = int((now - self._bucket_end) / width) + 1
            self._bucket_end += steps * width
        attempts, failures = self._attempts, self._failures
        for _ in range(min(steps, BUCKETS)):
            slot = self._slot = (self._slot + 1) % BUCKETS
            self._total -= attempts[slot]
            self._failed -= failures[slot]
            attempts[slot] = failures[slot] = 0

    # --- transitions -----------------------------------------------------------------------
    def force(self, now: float, open: bool, reason: str) -> bool:
        """An operator opens (until closed by hand) or closes the circuit. False if it was
        already so; the caller reports the change (on_change is for the breaker's own)."""
        if open:
            if self.state is _OPEN and self._manual:
                return False
            self._open(now, reason, report=False)
            self._manual = True
            self.open_until = math.inf
            return True
        if self.state is _CLOSED:
            return False
        self._close()
        self.state = _CLOSED
        self.reason = reason
        return True

    def _open(self, now: float, reason: str, *, report: bool = True) -> None:
        self.opened += 1
        self.open_until = now + self._cooldown
        self._ticket += 1  # outcomes of earlier probes no longer count
        self._probes_out = self._probe_ok = 0
        if report:
            self._change(_OPEN, reason)
        else:
            self.state, self.reason = _OPEN, reason

    def _close(self) -> None:
        self._manual = False
        self._cooldown = self._config.cooldown
        self._bucket_end = -math.inf  # an empty window: the next attempt starts it afresh
        for slot in range(BUCKETS):
            self._attempts[slot] = self._failures[slot] = 0
        self._total = self._failed = 0
        self.open_until = 0.0

    def _change(self, state: CircuitState, reason: str) -> None:
        self.state = state
        self.reason = reason
        self._on_change(state, reason)
