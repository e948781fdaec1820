"""HTTP handlers of the v1 message endpoints and health.

Handlers translate HTTP to Dispatcher calls and back, nothing more: the wire format lives
in `ingest.py` and `cloudevent.py` (requests) and `views.py` (responses), behaviour in the
Dispatcher. Operator endpoints (pools, DLQ, audit, subscribe) are in `operations.py`; which
route runs which handler, with which scope, is the table in `routes.py`.
`Singles` publishes the single messages of concurrent requests together.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import time
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from ..dispatcher import Dispatcher
from ..errors import NotFound
from ..message import Accepted, Publish
from ..state import DISPATCHER
from . import cloudevent, ingest
from .views import BatchAccepted, Status, accepted, json_response, message_view

_Group = list[tuple[Publish, asyncio.Future[Accepted]]]


class Singles:
    """Publishes the single messages of requests that arrive together as one batch.

    Python pays per `Dispatcher.publish` call (ids, backlog reservation, metrics, a store
    round trip, a savepoint in the writer), so 64 concurrent `POST /v1/messages` cost far
    less as one publish of 64. A group collects the requests whose handlers run in the same
    event-loop pass (those read in one poll) and is published on the next pass.

    While `max_in_flight` groups are being published, the next one goes on growing and
    leaves when one of them is done: with one writer (SQLite's), it would have committed
    after them anyway, and one write of many costs the writer less than many of a few (the
    measured gain is in tests/bench/README.md). A group never waits more than `max_wait`
    seconds, so a slow publish (a Redis store settling an id conflict item by item: 25 ms
    for a group of 100, 230 for 1,000) holds the requests behind it up only that long;
    20 ms, above what a commit takes under load (5 ms cost 10% of the gain).

    Every message joins: anonymous ones, producer ids and Idempotency-Keys, traced ones.
    The answers stay those of publishing alone (`Dispatcher.publish_each`): a duplicate is
    a duplicate, a reused id its own 422, a refused message its own 4xx/429/503, and
    nothing of one request depends on another's validity. A traced request's PRODUCER span
    starts here, in the request's own context, so it is a child of that request's SERVER
    span; a group is published in a context of its own, no request's.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        max_group: int = ingest.MAX_BATCH,
        max_in_flight: int = 1,
        max_wait: float = 0.02,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._dispatcher = dispatcher
        self._max = max_group
        self._max_in_flight = max_in_flight
        self._max_wait = max_wait
        self._group: _Group | None = None
        self._out = 0  # groups let go (scheduled or publishing) and not yet done
        self._waiting: collections.deque[tuple[_Group, asyncio.TimerHandle]] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(self, item: Publish) -> Accepted:
        tracing = self._dispatcher.tracing
        if not tracing.live:
            return await self._join(item)
        span, item = tracing.start_send(item)
        try:
            accepted = await self._join(item)
        except BaseException as exc:
            tracing.end_send(span, exc)
            raise
        tracing.end_send(span, accepted)
        return accepted

    def _join(self, item: Publish) -> asyncio.Future[Accepted]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Accepted] = loop.create_future()
        group = self._group
        if group is None or len(group) >= self._max:
            group = self._group = []
            if self._out < self._max_in_flight:
                self._out += 1
                loop.call_soon(self._flush, group, context=contextvars.Context())
            else:
                overdue = loop.call_later(
                    self._max_wait, self._overdue, group, context=contextvars.Context()
                )
                self._waiting.append((group, overdue))
        group.append((item, future))
        return future

    def _flush(self, group: _Group) -> None:
        if self._group is group:
            self._group = None
        # In a context of its own (we are called in one): not that of the request whose
        # group happened to let it go, which its logs and spans would otherwise carry.
        task = asyncio.get_running_loop().create_task(self._publish(group))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._out -= 1
        if self._waiting:
            group, overdue = self._waiting.popleft()
            overdue.cancel()
            self._out += 1
            self._flush(group)

    def _overdue(self, group: _Group) -> None:
        """A group waited `max_wait`: it goes now, beside those in flight."""
        for i, (waiting, _) in enumerate(self._waiting):
            if waiting is group:
                del self._waiting[i]
                self._out += 1
                self._flush(group)
                return

    async def _publish(self, group: _Group) -> None:
        # A request that went away before its group left (the client hung up) stays out.
        group = [(item, future) for item, future in group if not future.done()]
        try:
            if not group:
                return
            try:
                results = await self._dispatcher.publish_each([item for item, _ in group])
            except Exception as exc:  # ingest is closed to every message alike
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                return
            for (_, future), result in zip(group, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Accepted):
                    future.set_result(result)
                else:
                    future.set_exception(result)
        finally:
            for _, future in group:  # cancelled at shutdown: nobody is left waiting
                future.cancel()

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """The app's cleanup context: groups still publishing are awaited at shutdown."""
        yield
        while self._tasks:  # a group done lets a waiting one go
            await asyncio.gather(*self._tasks, return_exceptions=True)


SINGLES = web.AppKey("singles", Singles)


async def _body(request: web.Request, dispatcher: Dispatcher) -> bytes:
    server = dispatcher.settings.server
    return await ingest.read_body(request, server.max_body_bytes, server.request_timeout)


def _media_type(request: web.Request) -> str:
    return request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


async def post_message(request: web.Request) -> web.Response:
    dispatcher = request.app[DISPATCHER]
    body = await _body(request, dispatcher)
    headers = request.headers
    if _media_type(request) == cloudevent.STRUCTURED:
        item = cloudevent.decode_structured(body, headers)
    elif "ce-specversion" in headers:
        item = cloudevent.decode_binary(body, headers)
    else:
        item = ingest.decode_single(body, headers)
    result = await request.app[SINGLES].publish(item)
    location = {"Location": f"/v1/messages/{result.id}"}
    return json_response(accepted(result), 200 if result.duplicate else 202, location)


async def post_batch(request: web.Request) -> web.Response:
    dispatcher = request.app[DISPATCHER]
    body = await _body(request, dispatcher)
    items: Sequence[Publish]
    if _media_type(request) == cloudevent.BATCH:
        items = cloudevent.decode_batch(body, request.headers)
    else:
        items = ingest.decode_batch(body, request.headers)
    results = await dispatcher.publish(items)
    return json_response(BatchAccepted([accepted(a) for a in results]), 202)


async def get_message(request: web.Request) -> web.Response:
    dispatcher = request.app[DISPATCHER]
    message_id = request.match_info["id"]
    status = await dispatcher.get_message(message_id)
    if status is None:
        raise NotFound(f"no message with id {message_id!r} (unknown, or delivered and expired)")
    return json_response(message_view(status, time.time()))


async def healthz(request: web.Request) -> web.Response:
    return json_response(Status("ok"))


async def readyz(request: web.Request) -> web.Response:
    dispatcher: Dispatcher = request.app[DISPATCHER]
    if await dispatcher.ready():
        return json_response(Status("ready"))
    reason = "draining" if dispatcher.draining else "store unavailable"
    return json_response(Status("unavailable", reason), 503, headers={"Retry-After": "5"})
