"""A pool-wide hold: a pure policy, with the (monotonic) clock passed in.

A receiver that answers 429 or 503 with `Retry-After` is talking to the pool, not to one
message: every attempt of the pool waits until then. The hold is capped by the pool's
`circuit.max_hold` (whether or not its circuit breaker is enabled), so one bad header cannot
stop a pool for a day, and only ever grows: a shorter Retry-After arriving while a longer
hold runs does not end it early.
"""

from __future__ import annotations


class Hold:
    __slots__ = ("until",)

    def __init__(self) -> None:
        self.until = 0.0  # no attempt before this time; in the past when not held

    def extend(self, now: float, seconds: float, cap: float) -> float:
        """Hold for `seconds` from `now`, at most `cap`; answers the seconds granted (0 when
        holding is off, `cap` 0). The hold itself only grows."""
        granted = min(seconds, cap)
        if granted > 0.0 and now + granted > self.until:
            self.until = now + granted
        return max(0.0, granted)

    def remaining(self, now: float) -> float:
        """Seconds left of the hold (0 when not held)."""
        return max(0.0, self.until - now)
