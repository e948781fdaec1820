"""The rows the writer inserts and the parameters of its updates, built on the event loop:
the writer thread (the bottleneck under load) then only executes them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ...message import Completion, Message, NewMessage
from .schema import CLAIMED, DEAD, DELIVERED, FANOUT_LIMIT, READY, SCHEDULED

DELIVERED_FIRST = -2  # not a stored state: groups first-attempt successes in writes.complete

_encode = msgspec.json.Encoder().encode


def to_json(value: object) -> str:
    return _encode(value).decode()


class NewRows:
    """A batch of new messages as the rows the writer inserts. Mids are numbered from
    `last_mid` + 1 in batch order; `keyed` holds (index, id, digest, until) of producer ids.

    With `fresh`, each message with one job not scheduled is put there by mid (while it
    holds fewer than `fresh_limit`), so that its claim needs not read it back.

    With `room` (pool -> how many new jobs its window takes now, asked once per pool), the
    first ready jobs of each pool, up to its room, are written claimed (state 1) and listed
    in `taken`, for the store to hand to the pool; the writer turns them back to ready when
    the pool has older jobs queued (writes.enqueue). A batch of mixed priorities hands
    nothing over: its first jobs need not be the first in claim order."""

    __slots__ = (
        "counts",
        "first_mid",
        "first_ready",
        "jobs",
        "keyed",
        "messages",
        "now",
        "opens",
        "shared",
        "taken",
    )
    #: (highest priority, earliest, latest time) of the new ready jobs, for the claim books
    first_ready: tuple[int, float, float] | None

    def __init__(
        self,
        batch: Sequence[NewMessage],
        last_mid: int,
        room: Callable[[str], int] | None = None,
        fresh: dict[int, Message] | None = None,
        fresh_limit: int = 0,
    ) -> None:
        self.messages: list[tuple[Any, ...]] = []
        self.jobs: list[tuple[Any, ...]] = []
        self.keyed: list[tuple[int, str, bytes, float]] = []
        self.counts: dict[str, int] = {}
        #: pool -> jids written claimed, in claim order
        self.taken: dict[str, list[int]] = {}
        #: pool -> (its books' ready_gen, its next scheduled job's time), for pools with
        #: nothing queued before this batch that a claim would return first (filled by the
        #: writer, writes._hand_over)
        self.opens: dict[str, tuple[int, float | None]] = {}
        self.now = now = batch[0].message.created_at
        priority0 = batch[0].message.priority
        plain = True  # every message without headers or trace, sharing priority and times
        self.first_mid = last_mid + 1
        add_message, add_job = self.messages.append, self.jobs.append
        per_route: dict[tuple[str, ...], int] = {}
        # The highest priority and earliest time among the new ready jobs, for the claim
        # cursors (taken apart, the pair may belong to two messages: that errs on the safe side).
        priority: float = -math.inf
        lowest: float = math.inf
        earliest, latest = math.inf, -math.inf
        left: dict[str, int] = {}  # room left per pool
        taken = self.taken
        mid = last_mid
        for index, new in enumerate(batch):
            m = new.message
            mid += 1
            add_message((mid, m.id, m.tag, m.payload))
            if plain and (
                m.headers
                or m.trace is not None
                or m.priority != priority0
                or m.created_at != now
                or m.available_at != now
            ):
                plain = False
            if new.digest is not None:
                self.keyed.append((index, m.id, new.digest, new.dedup_until))
            pools = new.pools
            if m.available_at > m.created_at:
                state, available_at = SCHEDULED, m.available_at
            else:
                state, available_at = READY, m.created_at
                if m.priority > priority:
                    priority = m.priority
                if m.priority < lowest:
                    lowest = m.priority
                if room is not None and len(pools) == 1:
                    pool = pools[0]
                    n = left.get(pool)
                    if n is None:
                        n = room(pool)
                        taken[pool] = []
                    if n > 0:
                        state = CLAIMED
                        taken[pool].append(mid * FANOUT_LIMIT)
                        n -= 1
                    left[pool] = n
                elif room is not None:
                    # Fanned out, so written ready: nothing after it may jump the queue.
                    for pool in pools:
                        left[pool] = 0
                if available_at < earliest:
                    earliest = available_at
                if available_at > latest:
                    latest = available_at
            if len(pools) == 1:
                if state != SCHEDULED and fresh is not None and len(fresh) < fresh_limit:
                    # For the claim that will take it (writes.claim); a job handed over
                    # after all is taken out again once committed (SqliteStore._hand_over).
                    fresh[mid] = m
                add_job(
                    (
                        mid * FANOUT_LIMIT,
                        mid,
                        pools[0],
                        state,
                        m.priority,
                        available_at,
                        m.created_at,
                    )
                )
            else:
                pools = tuple(dict.fromkeys(pools))
                for k, pool in enumerate(pools):
                    add_job(
                        (
                            mid * FANOUT_LIMIT + k,
                            mid,
                            pool,
                            state,
                            m.priority,
                            available_at,
                            m.created_at,
                        )
                    )
            per_route[pools] = per_route.get(pools, 0) + 1
        for pools, n in per_route.items():
            for pool in pools:
                self.counts[pool] = self.counts.get(pool, 0) + n
        #: where the first of the new ready jobs sorts, for the claim cursors
        self.first_ready = None if earliest == math.inf else (int(priority), earliest, latest)
        #: a plain batch's messages are (mid, id, tag, payload), and these the values they
        #: share: (priority, created_at = available_at); None: the messages are whole rows
        self.shared: tuple[int, float] | None = (priority0, now) if plain else None
        if not plain:
            self.messages = [
                (
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    to_json(m.headers) if m.headers else None,
                    m.priority,
                    m.created_at,
                    m.available_at,
                    m.trace,
                )
                for row, m in zip(self.messages, (new.message for new in batch), strict=True)
            ]
        if lowest < priority:
            for pool in list(taken):
                self.untake(pool)

    def untake(self, pool: str) -> None:
        """Write the jobs `taken` for `pool` ready after all."""
        jids = set(self.taken.pop(pool, ()))
        if jids:
            self.jobs = [
                (j[0], j[1], j[2], READY, *j[4:]) if j[0] in jids else j for j in self.jobs
            ]

    def keep(self, mids: set[int]) -> NewRows:
        """These rows without the messages not in `mids` (duplicates)."""
        kept = object.__new__(NewRows)
        kept.now, kept.first_ready, kept.first_mid = self.now, self.first_ready, self.first_mid
        kept.shared = self.shared
        kept.opens = self.opens  # one dict: the writer fills it, the store reads it
        kept.taken = {
            pool: [jid for jid in jids if jid // FANOUT_LIMIT in mids]
            for pool, jids in self.taken.items()
        }
        kept.messages = [m for m in self.messages if m[0] in mids]
        kept.jobs = [j for j in self.jobs if j[1] in mids]
        kept.keyed = [k for k in self.keyed if self.messages[k[0]][0] in mids]
        kept.counts = {}
        for job in kept.jobs:
            kept.counts[job[2]] = kept.counts.get(job[2], 0) + 1
        return kept


def outcome_rows(
    completions: Sequence[Completion],
) -> dict[tuple[int, str], list[tuple[Any, ...]]]:
    """Parameter rows of the outcome statements, grouped by (fate, pool); jid last."""
    groups: dict[tuple[int, str], list[tuple[Any, ...]]] = {}
    for c in completions:
        a = c.attempt
        if c.dead is None and c.retry_at is None and c.job.attempts == 0:
            # The common case, success at the first attempt: two numbers, no log (the
            # store reads the attempt back from them, see writes._DELIVERED_FIRST_SQL).
            key = (DELIVERED_FIRST, c.job.pool)
            rows = groups.get(key)
            if rows is None:
                rows = groups[key] = []
            rows.append((a.started_at, a.duration, c.job.key))
            continue
        log = to_json(a)
        if c.dead is not None:
            key = (DEAD, c.job.pool)
            row: tuple[Any, ...] = (
                log,
                a.started_at + a.duration,
                c.dead.value,
                a.error,
                c.job.key,
            )
        elif c.retry_at is not None:
            key = (SCHEDULED, c.job.pool)
            row = (log, c.retry_at, a.error, c.job.key)
        else:
            key = (DELIVERED, c.job.pool)
            row = (log, a.started_at + a.duration, c.job.key)
        rows = groups.get(key)
        if rows is None:
            groups[key] = [row]
        else:
            rows.append(row)
    return groups
