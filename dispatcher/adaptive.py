"""Adaptive concurrency: how many attempts in flight a receiver takes, found by trying. A pure
policy, with the (monotonic) clock passed in.

The limit moves between `floor` (the pool's `adaptive.min_concurrency`) and `ceiling` (its
`concurrency`, which an operator's PATCH changes), as TCP's congestion window does:

- it starts at the floor and, while the receiver keeps up, grows by one per success, which
  doubles it every round trip (slow start), until the first sign of overload;
- after that it grows by one per round trip (1/limit per success);
- on a sign of overload (a 429, a 503, a timeout, or a success slower than three times the
  recent minimum latency and 50 ms above it) it shrinks to three quarters, at most once per
  round: only an attempt started after the last cut can cut again, since those started
  before it were sent at the old limit and say nothing about the new one.

It only grows while the limit is what holds the pool back (the attempts in flight reach it):
a pool with little traffic, or one held back by its rate, does not climb to a limit it never
tried. Three quarters rather than TCP's half keeps the sawtooth close under the capacity: a
receiver that takes 20 sees 15 to 21 in flight, so about 90% of what it could take.
"""

from __future__ import annotations

import math

DECREASE = 0.75
#: a success this many times slower than the recent minimum latency is a sign of overload...
SLOW_FACTOR = 3.0
#: ...when it is also this many seconds slower (a fast receiver's jitter is not overload)
SLOW_MARGIN = 0.05
#: the recent minimum latency is the lowest of the last one or two spans of this long
MIN_LATENCY_SPAN = 30.0


class AdaptiveLimit:
    __slots__ = ("_cut_at", "_min", "_min_until", "_previous_min", "_slow_start", "_value",
                 "ceiling", "floor", "limit", "min_concurrency")  # fmt: skip

    def __init__(self, min_concurrency: int, ceiling: int, now: float) -> None:
        self.min_concurrency = min_concurrency
        self.ceiling = ceiling
        self.floor = min(min_concurrency, ceiling)
        self._value = float(self.floor)
        self.limit = self.floor  # the effective concurrency
        self._slow_start = True
        self._cut_at = -math.inf  # when the limit was last cut
        self._min = self._previous_min = math.inf
        self._min_until = now + MIN_LATENCY_SPAN

    def configure(self, ceiling: int) -> int:
        """A new ceiling (the pool's concurrency changed); answers the limit."""
        self.ceiling = ceiling
        self.floor = min(self.min_concurrency, ceiling)
        self._value = min(max(self._value, float(self.floor)), float(ceiling))
        self.limit = int(self._value)
        return self.limit

    def record(
        self, now: float, started: float, latency: float, overloaded: bool, in_flight: int
    ) -> int:
        """An attempt started at `started` ended at `now` after `latency` seconds, with
        `in_flight` attempts running (itself included); `overloaded`: it met a 429, a 503 or
        a timeout. Answers the limit."""
        if not overloaded:
            if now >= self._min_until:
                self._previous_min, self._min = self._min, math.inf
                self._min_until = now + MIN_LATENCY_SPAN
            if latency < self._min:
                self._min = latency
            lowest = self._min if self._min < self._previous_min else self._previous_min
            overloaded = latency > SLOW_FACTOR * lowest and latency > lowest + SLOW_MARGIN
        if overloaded:
            if started >= self._cut_at:
                self._cut_at = now
                self._slow_start = False
                value = self._value * DECREASE
                self._value = value if value > self.floor else float(self.floor)
                self.limit = int(self._value)
        elif in_flight >= self.limit and self._value < self.ceiling:
            value = self._value + (1.0 if self._slow_start else 1.0 / self._value)
            self._value = value if value < self.ceiling else float(self.ceiling)
            self.limit = int(self._value)
        return self.limit
