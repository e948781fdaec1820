"""RedisStore: the Store interface over the layout of the package docstring."""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import msgspec
from redis.exceptions import NoScriptError, RedisError

from ...errors import IdConflict, PartlyDone, StoreError
from ...message import (
    AuditEntry,
    Completion,
    DeadReason,
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
    contains_ci,
    format_dlq_cursor,
    parse_dlq_cursor,
    require_pools,
)
from . import codec, scripts
from .codec import Meta, member, number
from .connect import connect, durability
from .keys import Keys

log = logging.getLogger("dispatcher.store.redis")

_NUMBERS: Final = 4096  # job numbers taken from `{prefix}:seq` at a time
_PROMOTE: Final = 1000  # due scheduled (or lease-expired) jobs a claim moves back at most
_CHUNK: Final = 1000  # jobs per script call of a bulk operation (DLQ, expiry)
_PAGE: Final = 200  # DLQ entries read per round trip while filtering

_ERRORS = (RedisError, OSError)


class RedisStore(Store):
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "dispatcher",
        lease: float = 30.0,
        consumer: str | None = None,
    ) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.lease = lease
        #: names this process's claims; stable across restarts of the same instance, so a
        #: restarted process takes its own claims back at once instead of after the lease
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self._durable = False
        self._client: Any = None
        self._open = False
        self._numbers = range(0)
        self._known_pools: set[str] = set()
        self._shas: dict[str, str] = {}
        self._rates: dict[str, tuple[float, int]] = {}

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
        try:
            self._client = await connect(self.url)
            self._durable, why = await durability(self._client)
            if not self._durable:
                log.warning("redis: an acknowledged message can be lost: %s", why)
            await self._load_scripts()
            self._open = True
            requeued = 0
            for pool in await self._pools():
                requeued += int(await self._call("release", pool, [self.consumer]))
            return requeued
        except _ERRORS as exc:
            await self._drop_client()
            raise StoreError(f"redis: {exc}") from exc

    async def close(self) -> None:
        self._open = False
        await self._drop_client()

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> bool:
        if not self._open:
            return False
        try:
            return bool(await self._client.ping())
        except _ERRORS:
            return False

    # --- plumbing ------------------------------------------------------------------------
    def _check(self) -> None:
        if not self._open:
            raise StoreError("the redis store is not open")

    @asynccontextmanager
    async def _io(self) -> AsyncIterator[Any]:
        """The client, with every Redis or socket error turned into a StoreError (the API
        answers 503 and Retry-After; redis-py reconnects on the next command)."""
        self._check()
        try:
            yield self._client
        except _ERRORS as exc:
            raise StoreError(f"redis: {exc}") from exc

    async def _load_scripts(self) -> None:
        for name, source in scripts.ALL.items():
            self._shas[name] = await self._client.script_load(source)

    async def _call(self, script: str, pool: str, args: Sequence[Any]) -> Any:
        """Run one script on one pool's keys."""
        return (await self._many([(script, pool, args)]))[0]

    async def _many(self, calls: Sequence[tuple[str, str, Sequence[Any]]]) -> list[Any]:
        """Run scripts in one round trip (a pipeline, not a transaction: each script is
        atomic on its own). A server that lost its script cache (a restart) gets them
        loaded again and the calls that found none are run again: they did nothing."""
        async with self._io() as client:
            results: list[Any] = [None] * len(calls)
            todo = list(range(len(calls)))
            for _ in range(2):
                pipe = client.pipeline(transaction=False)
                for i in todo:
                    name, pool, args = calls[i]
                    tag, keys = self.keys.pool(pool)
                    pipe.evalsha(self._shas[name], len(keys), *keys, tag, *args)
                answers = await pipe.execute(raise_on_error=False)
                missing = []
                for i, answer in zip(todo, answers, strict=True):
                    if isinstance(answer, NoScriptError):
                        missing.append(i)
                    elif isinstance(answer, Exception):
                        raise answer
                    else:
                        results[i] = answer
                if not missing:
                    return results
                await self._load_scripts()
                todo = missing
            raise StoreError("redis: the scripts could not be loaded")

    async def _pools(self) -> list[str]:
        async with self._io() as client:
            names = await client.smembers(self.keys.pools)
        return sorted(n.decode() for n in names)

    async def _take_numbers(self, n: int) -> Iterable[int]:
        """Job numbers, unique across processes: a block from the shared counter at a time."""
        numbers = self._numbers
        if len(numbers) < n:
            take = max(n, _NUMBERS)
            async with self._io() as client:
                end = int(await client.incrby(self.keys.seq, take))
            numbers = range(end - take + 1, end + 1)
        self._numbers = numbers[n:]
        return numbers[:n]

    # --- the hot path --------------------------------------------------------------------
    async def enqueue(self, batch: Sequence[NewMessage]) -> list[bool]:
        require_pools(batch)
        self._check()
        first: dict[str, bytes | None] = {}
        repeat: list[bool] = []
        for index, new in enumerate(batch):
            held = first.get(new.message.id, b"")
            if held == b"":
                first[new.message.id] = new.digest
                repeat.append(False)
                continue
            if held is not None and new.digest is not None and held != new.digest:
                raise IdConflict(new.message.id, index)
            repeat.append(True)

        fanned = [(new, tuple(dict.fromkeys(new.pools))) for new in batch]
        numbers = iter(await self._take_numbers(sum(len(p) for _, p in fanned)))
        records: dict[str, list[tuple[Any, ...]]] = {}
        blobs: dict[str, list[bytes]] = {}
        index_of: dict[str, list[int]] = {}  # per pool: the batch index of each message
        answer_at: list[tuple[str, int] | None] = []  # per message: (first pool, its place)
        digests = False
        for index, ((new, pools), again) in enumerate(zip(fanned, repeat, strict=True)):
            if again:
                answer_at.append(None)
                continue
            m = new.message
            blob = codec.encode(m)
            available_at = max(m.available_at, m.created_at)
            for j, pool in enumerate(pools):
                digest = new.digest.hex() if new.digest is not None and j == 0 else ""
                digests = digests or bool(digest)
                if j == 0:
                    answer_at.append((pool, len(index_of.get(pool, ()))))
                job = member(next(numbers))
                until = float(new.dedup_until)
                records.setdefault(pool, []).append(
                    (m.id, job, m.priority, available_at, m.created_at, digest, until, len(blob))
                )
                blobs.setdefault(pool, []).append(blob)
                index_of.setdefault(pool, []).append(index)
        args = {pool: (codec.encode(rs), b"".join(blobs[pool])) for pool, rs in records.items()}

        new_pools = [p for p in args if p not in self._known_pools]
        if new_pools:
            async with self._io() as client:
                await client.sadd(self.keys.pools, *new_pools)
            self._known_pools.update(new_pools)

        def refuse_conflicts(answers: list[Any]) -> None:
            for pool, answer in zip(args, answers, strict=True):
                if len(answer) == 2 and answer[0] == b"conflict":
                    index = index_of[pool][int(answer[1])]
                    raise IdConflict(batch[index].message.id, index)

        if digests and len(args) > 1:
            # Refuse a conflicting id before any pool writes: a batch is all or nothing.
            refuse_conflicts(await self._many([("enqueue", p, ["c", *a]) for p, a in args.items()]))
        answers = await self._many([("enqueue", p, ["w", *a]) for p, a in args.items()])
        refuse_conflicts(answers)
        by_pool = dict(zip(args, answers, strict=True))
        return [at is not None and by_pool[at[0]][at[1]] == 1 for at in answer_at]

    async def claim(self, pool: str, limit: int, now: float) -> Claim:
        if limit <= 0:
            self._check()
            return Claim([], None)
        rate, burst = self._rates.get(pool, (0.0, 1))
        next_at, rows, dry = await self._call(
            "claim",
            pool,
            [number(now), limit, self.consumer, number(self.lease), _PROMOTE, number(rate), burst],
        )
        jobs = []
        for key, raw, blob in rows:
            meta = Meta(raw)
            job_number = codec.number_of(key)
            jobs.append(
                Job(
                    codec.job_key(job_number, meta.claims),
                    pool,
                    codec.message(blob),
                    meta.attempts,
                    meta.available_at,
                )
            )
        due = None if next_at is None else float(next_at)
        if dry is not None:  # the shared bucket ran dry: come back when it has a token
            due = min(due or math.inf, now + float(dry))
        return Claim(jobs, due)

    async def complete(self, completions: Sequence[Completion]) -> None:
        records: dict[str, list[tuple[Any, ...]]] = {}
        blobs: dict[str, list[bytes]] = {}
        for c in completions:
            key, claims = codec.split_key(c.job.key)
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
        self._check()
        await self._many(
            [("complete", p, [codec.encode(rs), b"".join(blobs[p])]) for p, rs in records.items()]
        )

    async def release(self, jobs: Sequence[Job]) -> None:
        args: dict[str, list[Any]] = {}
        for job in jobs:
            args.setdefault(job.pool, []).extend(codec.split_key(job.key))
        self._check()
        await self._many([("release", p, ["", *a]) for p, a in args.items()])

    # --- reads ---------------------------------------------------------------------------
    async def get_message(self, message_id: str) -> MessageStatus | None:
        pools = await self._pools()
        answers = await self._many([("status", p, [message_id]) for p in pools])
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
        pools = await self._pools()
        answers = await self._many([("counts", p, [number(now)]) for p in pools])
        out: dict[str, PoolCounts] = {}
        for pool, (ready, scheduled, claimed, dead, oldest) in zip(pools, answers, strict=True):
            if ready or scheduled or claimed or dead:
                oldest_at = None if oldest is None else float(oldest)
                out[pool] = PoolCounts(ready, scheduled, claimed, dead, oldest_at)
        return out

    # --- dead-letter queue ---------------------------------------------------------------
    async def _dead(
        self, pool: str, sel: DlqFilter, before: tuple[float, int] | None, most: int | None
    ) -> list[tuple[float, int, Meta, bytes]]:
        """Matching dead jobs of one pool, newest failure first, (failed_at, number) below
        `before`; at most `most` (None: all)."""
        ids = set(sel.ids) if sel.ids is not None else None
        out: list[tuple[float, int, Meta, bytes]] = []
        top = "+inf" if before is None else number(before[0])
        skip = 0  # entries scored `top` already read
        while True:
            rows = await self._call("dead_page", pool, [top, skip, _PAGE])
            for key, score, raw, blob in rows:
                at, n = float(score), codec.number_of(key)
                if before is not None and (at, n) >= before:
                    continue
                if sel.since is not None and at < sel.since:
                    return out
                meta = Meta(raw)
                if sel.error is not None and not contains_ci(meta.error, sel.error):
                    continue
                if ids is not None or sel.tag is not None:
                    m = codec.message(blob)
                    if (ids is not None and m.id not in ids) or (
                        sel.tag is not None and m.tag != sel.tag
                    ):
                        continue
                out.append((at, n, meta, blob))
                if most is not None and len(out) >= most:
                    return out
            if len(rows) < _PAGE:
                return out
            # The next page starts at the last score read, past the entries of that score
            # already read (Redis prints a score the same way every time).
            last = rows[-1][1].decode()
            equal = sum(1 for r in rows if r[1] == rows[-1][1])
            skip = skip + equal if last == top else equal
            top = last

    async def _dead_all(
        self, sel: DlqFilter, before: tuple[float, int] | None = None, most: int | None = None
    ) -> list[tuple[float, int, str, Meta, bytes]]:
        """Matching dead jobs of every pool (or the selected one), newest failure first."""
        pools = [sel.pool] if sel.pool is not None else await self._pools()
        found = [
            (at, n, pool, meta, blob)
            for pool in pools
            for at, n, meta, blob in await self._dead(pool, sel, before, most)
        ]
        found.sort(key=lambda f: (f[0], f[1]), reverse=True)
        return found if most is None else found[:most]

    async def dlq_list(
        self, selector: DlqFilter, limit: int, cursor: str | None = None
    ) -> tuple[list[DlqEntry], str | None]:
        before = None if cursor is None else parse_dlq_cursor(cursor)
        limit = max(limit, 0)
        found = await self._dead_all(selector, before, limit + 1)
        page = found[:limit]
        entries = [
            DlqEntry(
                message=codec.message(blob),
                pool=pool,
                attempts=meta.attempts,
                error=meta.error,
                failed_at=at,
                reason=meta.reason or DeadReason.MAX_ATTEMPTS,
            )
            for at, _, pool, meta, blob in page
        ]
        more = len(found) > len(page) and page
        return entries, (format_dlq_cursor(page[-1][0], page[-1][1]) if more else None)

    async def dlq_count(self, selector: DlqFilter) -> int:
        sel = selector
        if sel.ids is None and sel.tag is None and sel.error is None:
            # By pool and time alone: counted by the server, not read entry by entry.
            pools = [sel.pool] if sel.pool is not None else await self._pools()
            low = "-inf" if sel.since is None else number(sel.since)
            async with self._io() as client:
                pipe = client.pipeline(transaction=False)
                for pool in pools:
                    pipe.zcount(self.keys.of(pool, "dlq"), low, "+inf")
                return sum(await pipe.execute())
        return len(await self._dead_all(selector))

    async def dlq_replay(
        self, selector: DlqFilter, now: float, interval: float = 0.0
    ) -> dict[str, int]:
        found = await self._dead_all(selector)
        found.reverse()  # oldest failure first: the k-th is due at now + k * interval
        plan = [
            (pool, member(n), number(now + k * interval))
            for k, (_, n, pool, _, _) in enumerate(found)
        ]
        return await self._in_chunks("replay", [(p, (m, at)) for p, m, at in plan], [number(now)])

    async def dlq_purge(self, selector: DlqFilter) -> dict[str, int]:
        found = await self._dead_all(selector)
        return await self._in_chunks(
            "purge", [(pool, (member(n),)) for _, n, pool, _, _ in found], []
        )

    async def _in_chunks(
        self, script: str, items: Sequence[tuple[str, tuple[str, ...]]], head: list[Any]
    ) -> dict[str, int]:
        """Run a bulk script over `items` (pool, args) a chunk at a time; a failure after
        some chunks raises PartlyDone with what they did."""
        done: dict[str, int] = {}
        by_pool: dict[str, list[str]] = {}
        for pool, item in items:
            by_pool.setdefault(pool, []).extend(item)
        for pool, args in by_pool.items():
            width = len(items[0][1])
            for start in range(0, len(args), _CHUNK * width):
                try:
                    n = int(
                        await self._call(
                            script, pool, [*head, *args[start : start + _CHUNK * width]]
                        )
                    )
                except StoreError as exc:
                    if done:
                        raise PartlyDone(exc, done) from exc
                    raise
                if n:
                    done[pool] = done.get(pool, 0) + n
        return done

    # --- housekeeping, settings, audit ---------------------------------------------------
    async def expire(self, delivered_before: float, ids_before: float | None = None) -> int:
        ids_cutoff = delivered_before if ids_before is None else ids_before
        args = [number(delivered_before), number(ids_cutoff), _CHUNK]
        total = 0
        for pool in await self._pools():
            while True:
                jobs, ids = await self._call("expire", pool, args)
                total += int(jobs)
                if jobs < _CHUNK and ids < _CHUNK:
                    break
        return total

    async def load_pool_settings(self) -> dict[str, dict[str, object]]:
        async with self._io() as client:
            raw = await client.hgetall(self.keys.settings)
        return {k.decode(): msgspec.json.decode(v) for k, v in raw.items()}

    async def save_pool_settings(self, pool: str, settings: Mapping[str, object]) -> None:
        async with self._io() as client:
            await client.hset(self.keys.settings, pool, msgspec.json.encode(dict(settings)))

    async def audit(self, entry: AuditEntry) -> None:
        async with self._io() as client:
            await client.xadd(self.keys.audit, {"e": msgspec.json.encode(entry)})

    async def audit_list(
        self, limit: int, cursor: str | None = None
    ) -> tuple[list[AuditEntry], str | None]:
        limit = max(limit, 0)
        top = "+" if cursor is None else "(" + cursor
        async with self._io() as client:
            rows = await client.xrevrange(self.keys.audit, top, "-", count=limit + 1)
        page = rows[:limit]
        entries = [msgspec.json.decode(fields[b"e"], type=AuditEntry) for _, fields in page]
        more = len(rows) > len(page) and page
        return entries, (page[-1][0].decode() if more else None)

    # --- console sessions ----------------------------------------------------------------
    async def load_session(self, session_id: str) -> bytes | None:
        async with self._io() as client:
            data: bytes | None = await client.get(self.keys.session(session_id))
        return data

    async def save_session(self, session_id: str, data: bytes, ttl: float) -> None:
        async with self._io() as client:
            await client.set(self.keys.session(session_id), data, px=int(ttl * 1000))

    async def drop_session(self, session_id: str) -> None:
        async with self._io() as client:
            await client.delete(self.keys.session(session_id))
