"""Ingest: route what producers publish, reserve backlog room, commit, answer.

Two ways in. `publish_all` takes a batch request, all-or-nothing: one refused message (no
route, a full backlog, a reused id) refuses the batch and nothing is stored. `publish_each`
takes the single messages of independent requests (api.Singles groups them) and commits
them together, each answered as if it had come alone; nothing of one depends on another's
validity. Both return once the store has made the messages durable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from .admission import Admission
from .errors import BacklogFull, IdConflict, Rejected, StoreError, Unavailable, Unroutable
from .message import Accepted, IdGenerator, Message, NewMessage, Publish
from .observe.metrics import Metrics
from .pool import Pool
from .routing import Router
from .stores.base import Store

#: an answer of publish_each, and a slot not answered yet
_Answer = Accepted | Rejected | None


class Publisher:
    def __init__(
        self,
        store: Store,
        router: Router,
        pools: Mapping[str, Pool],
        admission: Admission,
        metrics: Metrics | None,
        *,
        dedup_window: float,
        clock: Callable[[], float],
        ids: IdGenerator,
        check_open: Callable[[], None],
    ) -> None:
        self._store = store
        self._route = router.route
        self._pools = pools  # the Dispatcher's live pools, filled at start
        self._admission = admission
        self._metrics = metrics  # None: observability off
        self._dedup_window = dedup_window
        self._clock = clock
        self._ids = ids
        self._check_open = check_open  # raises Unavailable while closed to every message

    async def publish_all(self, items: Sequence[Publish]) -> list[Accepted]:
        """Route, check capacity and commit `items` all-or-nothing. Returns when durable.

        Raises Unroutable (no route for a tag), BacklogFull (a pool is full), IdConflict or
        Unavailable (draining, disk nearly full, store down); then nothing was stored.
        """
        self._check_open()
        per_route: dict[tuple[str, ...], int] = {}  # count per distinct pool tuple, not per pool
        news, unroutable = self._new_messages(items, per_route)
        if unroutable:
            index, refused = next((i, n) for i, n in enumerate(news) if isinstance(n, Unroutable))
            refused.pointer = "/tag" if len(items) == 1 else f"/{index}/tag"
            raise refused
        batch = cast(list[NewMessage], news)
        wanted = self._admission.reserve_routes(per_route)
        try:
            stored = await self._store.enqueue(batch)
        except StoreError as exc:
            self._admission.cancel(wanted)
            raise _unavailable(exc) from exc
        except IdConflict as exc:
            self._admission.cancel(wanted)
            exc.pointer = "/id" if len(items) == 1 else f"/{exc.index}/id"
            raise
        return self._committed(batch, stored, wanted)

    async def publish_each(self, items: Sequence[Publish]) -> list[Accepted | Rejected]:
        """Publish messages of independent producers in one commit, each with the answer it
        would get alone: Accepted (a duplicate included), or the Rejected that refuses it
        (Unroutable, BacklogFull, IdConflict, Unavailable), pointers as for one message.

        Raises Unavailable, storing nothing, when ingest is closed to every message
        (draining, disk nearly full)."""
        self._check_open()
        per_route: dict[tuple[str, ...], int] = {}
        news, unroutable = self._new_messages(items, per_route)
        answers: list[_Answer] = [None] * len(items)
        waiting = list(range(len(items)))  # positions still to commit
        if unroutable:
            for index, new in enumerate(news):
                if isinstance(new, Unroutable):
                    new.pointer = "/tag"
                    answers[index] = new
            waiting = [i for i in waiting if answers[i] is None]
        try:
            wanted = self._admission.reserve_routes(per_route)
        except BacklogFull:  # room for some: each in turn, as they would be served alone
            wanted, waiting = self._reserve_each(news, waiting, answers)
        if waiting:
            await self._commit_each(news, waiting, wanted, answers)
        return cast(list[Accepted | Rejected], answers)

    async def _commit_each(
        self,
        news: Sequence[NewMessage | Unroutable],
        waiting: list[int],
        wanted: dict[str, int],
        answers: list[_Answer],
    ) -> None:
        """Commit the items at `waiting` (room reserved: `wanted`) with Store.enqueue_each,
        and answer each: Accepted, its own IdConflict, or Unavailable if the store failed."""
        batch = [cast(NewMessage, news[i]) for i in waiting]
        try:
            stored = await self._store.enqueue_each(batch)
        except StoreError as exc:
            self._admission.cancel(wanted)
            unavailable = _unavailable(exc)
            unavailable.__cause__ = exc
            for index in waiting:
                answers[index] = unavailable
            return
        committed: list[tuple[int, NewMessage, bool]] = []
        for index, new, answer in zip(waiting, batch, stored, strict=True):
            if isinstance(answer, IdConflict):  # not written: its reservation goes back
                answer.pointer = "/id"
                answers[index] = answer
                for pool in new.pools:
                    wanted[pool] -= 1
                self._admission.cancel(dict.fromkeys(new.pools, 1))
            else:
                committed.append((index, new, answer))
        accepted = self._committed([c[1] for c in committed], [c[2] for c in committed], wanted)
        for (index, _, _), result in zip(committed, accepted, strict=True):
            answers[index] = result

    def _reserve_each(
        self, news: Sequence[NewMessage | Unroutable], waiting: list[int], answers: list[_Answer]
    ) -> tuple[dict[str, int], list[int]]:
        """Reserve backlog room for the items at `waiting` one by one; an item that finds
        none is answered BacklogFull. Returns the jobs reserved per pool and who got room."""
        wanted: dict[str, int] = {}
        admitted: list[int] = []
        for index in waiting:
            one = dict.fromkeys(cast(NewMessage, news[index]).pools, 1)
            try:
                self._admission.reserve(one)
            except BacklogFull as exc:
                answers[index] = exc
                continue
            admitted.append(index)
            for pool in one:
                wanted[pool] = wanted.get(pool, 0) + 1
        return wanted, admitted

    def _new_messages(
        self, items: Sequence[Publish], per_route: dict[tuple[str, ...], int]
    ) -> tuple[list[NewMessage | Unroutable], int]:
        """Each item routed and stamped (its id, the time) as a NewMessage, or Unroutable
        (with no pointer yet) when no route matches its tag; and how many were unroutable.
        `per_route` counts the routed ones by pool tuple (one pass over a batch, not two)."""
        now = self._clock()
        route = self._route
        dedup_until = now + self._dedup_window
        ids = self._ids.many(len(items))
        news: list[NewMessage | Unroutable] = []
        unroutable = 0
        for index, item in enumerate(items):
            pools = route(item.tag)
            if not pools:
                news.append(Unroutable(f"no route matches tag {item.tag!r}"))
                unroutable += 1
                continue
            per_route[pools] = per_route.get(pools, 0) + 1
            message = Message(
                item.id or ids[index],
                item.tag,
                item.payload,
                now,
                item.priority,
                now + item.delay if item.delay > 0 else now,
                item.headers,
                item.trace,
            )
            if item.id is None:
                news.append(NewMessage(message, pools))
            else:  # a producer's id: remembered for the dedup window, with a content digest
                news.append(NewMessage(message, pools, _digest(item), dedup_until))
        return news, unroutable

    def _committed(
        self, batch: list[NewMessage], stored: list[bool], wanted: dict[str, int]
    ) -> list[Accepted]:
        """The answers to a committed batch (whose reservation `wanted` the store now
        counts); duplicates give their backlog room back."""
        self._admission.committed(wanted)
        results: list[Accepted] = []
        duplicates: list[Accepted] = []
        for new, fresh in zip(batch, stored, strict=True):
            accepted = Accepted(new.message.id, new.message.tag, new.pools, not fresh)
            results.append(accepted)
            if not fresh:
                self._admission.release(dict.fromkeys(new.pools, 1))
                duplicates.append(accepted)
        for pool in wanted:
            self._pools[pool].notify()
        if self._metrics is not None:
            self._metrics.published(wanted, duplicates)
        return results


def _unavailable(exc: StoreError) -> Unavailable:
    return Unavailable(f"the store is unavailable: {exc}", retry_after=5.0)


def _digest(item: Publish) -> bytes:
    """What makes a repeat of an id the same message: its tag and payload."""
    h = hashlib.blake2b(item.tag.encode(), digest_size=16)
    h.update(b"\x00")
    h.update(item.payload)
    return h.digest()
