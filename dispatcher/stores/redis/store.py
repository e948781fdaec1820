"""RedisStore: the Store interface over the layout of the package docstring."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec

from ...background import Background
from ...errors import IdConflict, StoreError
from ...message import (
    AuditEntry,
    Completion,
    DlqEntry,
    DlqFilter,
    Job,
    JobStatus,
    MessageStatus,
    NewMessage,
    PoolCounts,
)
from ..base import (
    Claim,
    SessionStore,
    Store,
    require_pools,
)
from . import codec
from .codec import Meta, number
from .connect import connect, durability
from .dlq import CHUNK, DeadLetters
from .keys import Keys
from .runner import ERRORS, Runner

log = logging.getLogger("dispatcher.store.redis")

_NUMBERS: Final = 4096  # job numbers taken from `{prefix}:seq` at a time
_PROMOTE: Final = 1000  # due scheduled (or lease-expired) jobs a claim moves back at most


class RedisStore(Store):
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "dispatcher",
        lease: float = 30.0,
        consumer: str | None = None,
        renew: bool = True,
    ) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.lease = lease
        #: names this process's claims; stable across restarts of the same instance, so a
        #: restarted process takes its own claims back at once instead of after the lease
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self._durable = False
        self._run = Runner(self.keys)
        self._dlq = DeadLetters(self._run)
        self._numbers = range(0)
        self._known_pools: set[str] = set()
        self._rates: dict[str, tuple[float, int]] = {}
        #: per pool: the jobs this process holds (member -> claim count), whose leases a
        #: task extends every lease/3 seconds; `renew=False` (tests) lets them run out, as
        #: a stalled process would
        self._held: dict[str, dict[str, int]] = {}
        self._renew = renew
        self._renewer = Background("redis-leases", self._renew_leases)

    @property
    def durable(self) -> bool:
        return self._durable

    @property
    def shared(self) -> bool:
        return True

    @property
    def sessions(self) -> SessionStore:
        return self

    def share_rate(self, pool: str, rate: float | None, burst: int) -> None:
        self._rates[pool] = (rate or 0.0, max(burst, 1))

    def __repr__(self) -> str:
        return f"RedisStore({self.keys.prefix!r}, consumer={self.consumer!r})"

    # --- lifecycle -----------------------------------------------------------------------
    async def open(self) -> int:
        run = self._run
        try:
            run.client = await connect(self.url)
            self._durable, why = await durability(run.client)
            if not self._durable:
                log.warning("redis: an acknowledged message can be lost: %s", why)
            await run.load_scripts()
            run.open = True
            if self._renew:
                self._renewer.start()
            requeued = 0
            for pool in await self._run.pools():
                requeued += int(await self._run.call("release", pool, [self.consumer]))
            return requeued
        except ERRORS as exc:
            await self._drop_client()
            raise StoreError(f"redis: {exc}") from exc

    async def close(self) -> None:
        self._run.open = False
        await self._renewer.stop()
        await self._drop_client()

    async def _renew_leases(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.lease / 3)
            calls = [
                ("renew", pool, [number(self.lease), *(x for pair in held.items() for x in pair)])
                for pool, held in self._held.items()
                if held
            ]
            if not calls:
                continue
            try:
                await self._run.many(calls)
            except StoreError as exc:
                if not failing:
                    log.warning("redis: cannot extend the leases of claimed jobs: %s", exc)
                failing = True
            else:
                failing = False

    async def _drop_client(self) -> None:
        client, self._run.client = self._run.client, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> bool:
        if not self._run.open:
            return False
        try:
            return bool(await self._run.client.ping())
        except ERRORS:
            return False

    # --- plumbing ------------------------------------------------------------------------
    async def _take_numbers(self, n: int) -> Iterable[int]:
        """Job numbers, unique across processes: a block from the shared counter at a time."""
        numbers = self._numbers
        if len(numbers) < n:
            take = max(n, _NUMBERS)
            async with self._run.io() as client:
                end = int(await client.incrby(self.keys.seq, take))
            numbers = range(end - take + 1, end + 1)
        self._numbers = numbers[n:]
        return numbers[:n]

    # --- the hot path --------------------------------------------------------------------
    async def enqueue(self, batch: Sequence[NewMessage]) -> list[bool]:
        require_pools(batch)
        self._run.check()
        first: dict[str, bytes | None] = {}
        repeat: list[bool] = []
        in_batch: int | None = None  # the first repeat of an id with other content
        for index, new in enumerate(batch):
            held = first.get(new.message.id, b"")
            if held == b"":
                first[new.message.id] = new.digest
                repeat.append(False)
                continue
            if held is not None and new.digest is not None and held != new.digest:
                in_batch = index if in_batch is None else in_batch
            repeat.append(True)

        # Most messages go to one pool: no dedup of their pools needed.
        fanned = [n.pools if len(n.pools) == 1 else tuple(dict.fromkeys(n.pools)) for n in batch]
        members = iter(codec.members(await self._take_numbers(sum(map(len, fanned)))))
        records: dict[str, list[tuple[Any, ...]]] = {}
        blobs: dict[str, list[bytes]] = {}
        index_of: dict[str, list[int]] = {}  # per pool: the batch index of each message
        answer_at: list[tuple[str, int] | None] = []  # per message: (first pool, its place)
        digests = False
        encode = codec.encode
        for index, (new, pools, again) in enumerate(zip(batch, fanned, repeat, strict=True)):
            if again:
                answer_at.append(None)
                continue
            m = new.message
            blob = encode(m)
            size = len(blob)
            created = m.created_at
            available_at = m.available_at if m.available_at > created else created
            # The producer id's digest is kept in the first pool only.
            digest = "" if new.digest is None else new.digest.hex()
            digests = digests or bool(digest)
            until = float(new.dedup_until)
            home = pools[0]
            answer_at.append((home, len(index_of.get(home, ()))))
            for pool in pools:
                records.setdefault(pool, []).append(
                    (m.id, next(members), m.priority, available_at, created, digest, until, size)
                )
                blobs.setdefault(pool, []).append(blob)
                index_of.setdefault(pool, []).append(index)
                digest = ""
        args = {pool: (codec.encode(rs), b"".join(blobs[pool])) for pool, rs in records.items()}

        new_pools = [p for p in args if p not in self._known_pools]
        if new_pools:
            async with self._run.io() as client:
                await client.sadd(self.keys.pools, *new_pools)
            self._known_pools.update(new_pools)

        def refuse_conflicts(answers: list[Any], *more: int) -> None:
            """IdConflict for the first item that conflicts (as the other stores name it):
            with a remembered id (the scripts' answers) or with an earlier item (`more`)."""
            found = [
                index_of[pool][int(answer[1])]
                for pool, answer in zip(args, answers, strict=True)
                if len(answer) == 2 and answer[0] == b"conflict"
            ]
            if found or more:
                index = min([*found, *more])
                raise IdConflict(batch[index].message.id, index)

        if in_batch is not None or (digests and len(args) > 1):
            # Refuse a conflicting id before any pool writes: a batch is all or nothing.
            checks = await self._run.many([("enqueue", p, ["c", *a]) for p, a in args.items()])
            refuse_conflicts(checks, *(() if in_batch is None else (in_batch,)))
        answers = await self._run.many([("enqueue", p, ["w", *a]) for p, a in args.items()])
        refuse_conflicts(answers)
        by_pool = dict(zip(args, answers, strict=True))
        return [at is not None and by_pool[at[0]][at[1]] == 1 for at in answer_at]

    async def claim(self, pool: str, limit: int, now: float) -> Claim:
        if limit <= 0:
            self._run.check()
            return Claim([], None)
        rate, burst = self._rates.get(pool, (0.0, 1))
        next_at, rows, dry = await self._run.call(
            "claim",
            pool,
            [number(now), limit, self.consumer, number(self.lease), _PROMOTE, number(rate), burst],
        )
        jobs = []
        held = self._held.setdefault(pool, {})
        message, job_key, number_of = codec.message, codec.job_key, codec.number_of
        for key, raw, blob in rows:
            attempts, available_at, claims = codec.claimed(raw)
            held[key.decode()] = claims
            key = job_key(number_of(key), claims)
            jobs.append(Job(key, pool, message(blob), attempts, available_at))
        due = None if next_at is None else float(next_at)
        if dry is not None:  # the shared bucket ran dry: come back when it has a token
            due = min(due or math.inf, now + float(dry))
        return Claim(jobs, due)

    async def complete(self, completions: Sequence[Completion]) -> None:
        records: dict[str, list[tuple[Any, ...]]] = {}
        blobs: dict[str, list[bytes]] = {}
        for c in completions:
            key, claims = codec.split_key(c.job.key)
            self._held.get(c.job.pool, {}).pop(key, None)
            a = c.attempt
            if c.dead is not None:
                fate, when, reason = "x", a.started_at + a.duration, str(c.dead)
            elif c.retry_at is not None:
                fate, when, reason = "r", c.retry_at, ""
            else:
                fate, when, reason = "d", a.started_at + a.duration, ""
            blob = codec.encode(a)
            records.setdefault(c.job.pool, []).append(
                (key, claims, fate, float(when), reason, a.error, len(blob))
            )
            blobs.setdefault(c.job.pool, []).append(blob)
        self._run.check()
        await self._run.many(
            [("complete", p, [codec.encode(rs), b"".join(blobs[p])]) for p, rs in records.items()]
        )

    async def release(self, jobs: Sequence[Job]) -> None:
        args: dict[str, list[Any]] = {}
        for job in jobs:
            key, claims = codec.split_key(job.key)
            self._held.get(job.pool, {}).pop(key, None)
            args.setdefault(job.pool, []).extend((key, claims))
        self._run.check()
        await self._run.many([("release", p, ["", *a]) for p, a in args.items()])

    # --- reads ---------------------------------------------------------------------------
    async def get_message(self, message_id: str) -> MessageStatus | None:
        pools = await self._run.pools()
        answers = await self._run.many([("status", p, [message_id]) for p in pools])
        found = []
        for pool, (row,) in zip(pools, answers, strict=True):
            if row is not None:
                key, raw, blob, log_raw, hist_raw = row
                found.append((codec.number_of(key), pool, Meta(raw), blob, log_raw, hist_raw))
        if not found:
            return None
        found.sort(key=lambda f: f[0])
        statuses = [
            JobStatus(
                pool=pool,
                state=meta.public_state,
                available_at=meta.available_at,
                attempts=codec.attempts(log_raw, meta.attempts),
                history=codec.history(hist_raw, meta.generations),
                finished_at=meta.finished_at,
                dead_reason=meta.reason,
            )
            for _, pool, meta, _, log_raw, hist_raw in found
        ]
        return MessageStatus(message=codec.message(found[0][3]), jobs=statuses)

    async def counts(self, now: float) -> dict[str, PoolCounts]:
        pools = await self._run.pools()
        answers = await self._run.many([("counts", p, [number(now)]) for p in pools])
        out: dict[str, PoolCounts] = {}
        for pool, (ready, scheduled, claimed, dead, oldest) in zip(pools, answers, strict=True):
            if ready or scheduled or claimed or dead:
                oldest_at = None if oldest is None else float(oldest)
                out[pool] = PoolCounts(ready, scheduled, claimed, dead, oldest_at)
        return out

    # --- dead-letter queue ---------------------------------------------------------------
    async def dlq_list(
        self, selector: DlqFilter, limit: int, cursor: str | None = None
    ) -> tuple[list[DlqEntry], str | None]:
        return await self._dlq.page(selector, limit, cursor)

    async def dlq_count(self, selector: DlqFilter) -> int:
        return await self._dlq.count(selector)

    async def dlq_replay(
        self, selector: DlqFilter, now: float, interval: float = 0.0
    ) -> dict[str, int]:
        return await self._dlq.replay(selector, now, interval)

    async def dlq_purge(self, selector: DlqFilter) -> dict[str, int]:
        return await self._dlq.purge(selector)

    # --- housekeeping, settings, audit ---------------------------------------------------
    async def expire(self, delivered_before: float, ids_before: float | None = None) -> int:
        ids_cutoff = delivered_before if ids_before is None else ids_before
        args = [number(delivered_before), number(ids_cutoff), CHUNK]
        total = 0
        for pool in await self._run.pools():
            while True:
                jobs, ids = await self._run.call("expire", pool, args)
                total += int(jobs)
                if jobs < CHUNK and ids < CHUNK:
                    break
        return total

    async def load_pool_settings(self) -> dict[str, dict[str, object]]:
        async with self._run.io() as client:
            raw = await client.hgetall(self.keys.settings)
        return {k.decode(): msgspec.json.decode(v) for k, v in raw.items()}

    async def save_pool_settings(self, pool: str, settings: Mapping[str, object]) -> None:
        async with self._run.io() as client:
            await client.hset(self.keys.settings, pool, msgspec.json.encode(dict(settings)))

    async def audit(self, entry: AuditEntry) -> None:
        async with self._run.io() as client:
            await client.xadd(self.keys.audit, {"e": msgspec.json.encode(entry)})

    async def audit_list(
        self, limit: int, cursor: str | None = None
    ) -> tuple[list[AuditEntry], str | None]:
        limit = max(limit, 0)
        top = "+" if cursor is None else "(" + cursor
        async with self._run.io() as client:
            rows = await client.xrevrange(self.keys.audit, top, "-", count=limit + 1)
        page = rows[:limit]
        entries = [msgspec.json.decode(fields[b"e"], type=AuditEntry) for _, fields in page]
        more = len(rows) > len(page) and page
        return entries, (page[-1][0].decode() if more else None)

    # --- console sessions ----------------------------------------------------------------
    async def load_session(self, session_id: str) -> bytes | None:
        async with self._run.io() as client:
            data: bytes | None = await client.get(self.keys.session(session_id))
        return data

    async def save_session(self, session_id: str, data: bytes, ttl: float) -> None:
        async with self._run.io() as client:
            await client.set(self.keys.session(session_id), data, px=int(ttl * 1000))

    async def drop_session(self, session_id: str) -> None:
        async with self._run.io() as client:
            await client.delete(self.keys.session(session_id))
