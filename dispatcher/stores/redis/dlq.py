"""The Redis store's dead-letter queue: pages newest failure first across pools, counts,
replays and purges. Each pool's `dlq` sorted set is read a page at a time by one script;
filters on tag, error text and ids are applied here, on the decoded entries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from ...errors import PartlyDone, StoreError
from ...message import DeadReason, DlqEntry, DlqFilter
from ..base import contains_ci, format_dlq_cursor, parse_dlq_cursor
from . import codec
from .codec import Meta, member, number
from .runner import Runner

CHUNK: Final = 1000  # jobs per script call of a bulk operation
_PAGE: Final = 200  # DLQ entries read per round trip while filtering


class DeadLetters:
    def __init__(self, run: Runner) -> None:
        self._run = run

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
            rows = await self._run.call("dead_page", pool, [top, skip, _PAGE])
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
        pools = [sel.pool] if sel.pool is not None else await self._run.pools()
        found = [
            (at, n, pool, meta, blob)
            for pool in pools
            for at, n, meta, blob in await self._dead(pool, sel, before, most)
        ]
        found.sort(key=lambda f: (f[0], f[1]), reverse=True)
        return found if most is None else found[:most]

    async def page(
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

    async def count(self, selector: DlqFilter) -> int:
        sel = selector
        if sel.ids is None and sel.tag is None and sel.error is None:
            # By pool and time alone: counted by the server, not read entry by entry.
            pools = [sel.pool] if sel.pool is not None else await self._run.pools()
            low = "-inf" if sel.since is None else number(sel.since)
            async with self._run.io() as client:
                pipe = client.pipeline(transaction=False)
                for pool in pools:
                    pipe.zcount(self._run.keys.of(pool, "dlq"), low, "+inf")
                return sum(await pipe.execute())
        return len(await self._dead_all(selector))

    async def replay(
        self, selector: DlqFilter, now: float, interval: float = 0.0
    ) -> dict[str, int]:
        found = await self._dead_all(selector)
        found.reverse()  # oldest failure first: the k-th is due at now + k * interval
        plan = [
            (pool, member(n), number(now + k * interval))
            for k, (_, n, pool, _, _) in enumerate(found)
        ]
        return await self._in_chunks("replay", [(p, (m, at)) for p, m, at in plan], [number(now)])

    async def purge(self, selector: DlqFilter) -> dict[str, int]:
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
            for start in range(0, len(args), CHUNK * width):
                try:
                    n = int(
                        await self._run.call(
                            script, pool, [*head, *args[start : start + CHUNK * width]]
                        )
                    )
                except StoreError as exc:
                    if done:
                        raise PartlyDone(exc, done) from exc
                    raise
                if n:
                    done[pool] = done.get(pool, 0) + n
        return done
