"""Token bucket: `rate` tokens a second, holding at most `burst`.

Pure arithmetic with the clock passed in; the pool turns the answer into a sleep. Rate and burst
can change while tokens are held (a throttle from the console): the level is kept, capped.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_level", "_updated", "burst", "rate")

    def __init__(self, rate: float | None, burst: int, now: float) -> None:
        self.rate = rate  # None: unlimited
        self.burst = burst
        self._level = float(burst)
        self._updated = now

    def configure(self, rate: float | None, burst: int, now: float) -> None:
        self._refill(now)
        self.rate = rate
        self.burst = burst
        self._level = min(self._level, float(burst))

    def _refill(self, now: float) -> None:
        if self.rate is not None and now > self._updated:
            self._level = min(float(self.burst), self._level + (now - self._updated) * self.rate)
        self._updated = now

    def take(self, now: float) -> float:
        """Take one token. Returns 0.0 when granted, else the seconds to wait before the
        token exists; the token is then already reserved (the level goes negative), so
        concurrent waiters queue up fairly instead of racing for the same token."""
        if self.rate is None:
            return 0.0
        self._refill(now)
        self._level -= 1.0
        if self._level >= 0.0:
            return 0.0
        return -self._level / self.rate

    @property
    def level(self) -> float:
        return self._level
