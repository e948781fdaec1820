"""Admission: whether a pool's backlog has room for more messages, and when to ask again.

Each pool's outstanding count (jobs enqueued and neither delivered nor dead) starts from the
store's counts and is kept here in memory, so the `max_backlog` check costs no store read. A
publish reserves its share before it awaits the store, gives it back if the write fails or a
message was a duplicate, and a completion that ends a job (delivered, dead) releases one.
With a store shared by several processes the others' messages count too: `resync` resets
each pool's count from the store's (what every process committed) plus this process's
reservations still on their way to the store, twice a second (dispatcher/following.py).
A refusal carries a Retry-After worth waiting: long for a paused pool, else about the time
the pool needs to start `concurrency` more messages at its rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .errors import BacklogFull
from .pool import Pool


class Admission:
    __slots__ = ("_pending", "_pools", "outstanding")

    def __init__(self, pools: Mapping[str, Pool]) -> None:
        self._pools = pools  # the Dispatcher's live pools, filled at start
        #: per pool: jobs not yet delivered or dead (the acker's callback decrements it)
        self.outstanding: dict[str, int] = {}
        #: per pool: jobs reserved whose write the store has not answered yet
        self._pending: dict[str, int] = {}

    def reserve_routes(self, per_route: Mapping[tuple[str, ...], int]) -> dict[str, int]:
        """Reserve room for messages counted per pool tuple (as routed); returns the jobs
        reserved per pool. Raises BacklogFull, reserving nothing, when a pool has no room."""
        wanted: dict[str, int] = {}
        for pools, n in per_route.items():
            for pool in pools:
                wanted[pool] = wanted.get(pool, 0) + n
        self.reserve(wanted)
        return wanted

    def reserve(self, wanted: Mapping[str, int]) -> None:
        # Reserve before the await so concurrent requests cannot both squeeze past the limit.
        for pool, n in wanted.items():
            limit = self._pools[pool].config.max_backlog
            if self.outstanding[pool] + n > limit:
                raise BacklogFull(pool, limit, retry_after=self.retry_after(pool))
        pending = self._pending
        for pool, n in wanted.items():
            self.outstanding[pool] += n
            pending[pool] = pending.get(pool, 0) + n

    def committed(self, wanted: Mapping[str, int]) -> None:
        """The store wrote what `wanted` reserved (its count now includes them)."""
        pending = self._pending
        for pool, n in wanted.items():
            pending[pool] -= n

    def cancel(self, wanted: Mapping[str, int]) -> None:
        """The write failed: give the whole reservation back."""
        self.committed(wanted)
        self.release(wanted)

    def release(self, wanted: Mapping[str, int]) -> None:
        """Room back after the write (a duplicate took none)."""
        for pool, n in wanted.items():
            self.outstanding[pool] -= n

    def resync(self, stored: Mapping[str, int]) -> None:
        """Each pool's count from the store's (undone jobs of every process) and this
        process's reservations in flight."""
        for pool in self.outstanding:
            self.outstanding[pool] = stored.get(pool, 0) + self._pending.get(pool, 0)

    def readmit(self, pool: str, n: int) -> bool:
        """Count `n` jobs that came back (a DLQ replay); False for a pool not configured."""
        if pool not in self.outstanding:
            return False
        self.outstanding[pool] += n
        return True

    def retry_after(self, pool: str) -> float:
        p = self._pools[pool]
        if p.paused:
            return 30.0
        return 5.0 if p.rate is None else max(1.0, min(60.0, math.ceil(p.concurrency / p.rate)))
