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
import time
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from ..dispatcher import Dispatcher
from ..errors import NotFound
from ..message import Accepted, Publish
from ..state import DISPATCHER
from . import cloudevent, ingest
from .views import BatchAccepted, Status, accepted, json_response, message_view


class Singles:
    """Publishes the single messages of requests that arrive together as one batch.

    Python pays per `Dispatcher.publish` call (ids, backlog reservation, metrics, a store
    round trip, a savepoint in the writer), so 64 concurrent `POST /v1/messages` cost far
    less as one publish of 64. A group collects the requests whose handlers run in the same
    event-loop pass (those read in one poll) and is published on the next pass: one extra
    pass of latency, nothing else. While a group is being published (its commit waits for
    the writer), the next one goes on growing, and leaves when that is done: it could not
    commit sooner, and one write of many costs the writer less than many of a few (with
    in_flight 1: 64 clients with ids 64-65% -> 69% of bare aiohttp, p50 at 5,000/s 1.5-1.8
    -> 0.7-0.8 ms). Every message joins: anonymous ones, producer ids and Idempotency-Keys,
    traced ones.

    The answers stay those of publishing alone (`Dispatcher.publish_each`): a duplicate is
    a duplicate, a reused id its own 422, a refused message its own 4xx/429/503, and
    nothing of one request depends on another's validity. A traced request's PRODUCER span
    starts here, in the request's own context, so it is a child of that request's SERVER
    span, whichever request's task publishes the group.
    """

    def __init__(
        self, dispatcher: Dispatcher, max_group: int = ingest.MAX_BATCH, in_flight: int = 1
    ) -> None:
        self._dispatcher = dispatcher
        self._max = max_group
        self._in_flight = in_flight
        self._group: list[tuple[Publish, asyncio.Future[Accepted]]] | None = None
        self._waiting: collections.deque[list[tuple[Publish, asyncio.Future[Accepted]]]] = (
            collections.deque()
        )
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
            if len(self._tasks) < self._in_flight:
                loop.call_soon(self._flush, group)
            else:  # it grows until a group in flight is done
                self._waiting.append(group)
        group.append((item, future))
        return future

    def _flush(self, group: list[tuple[Publish, asyncio.Future[Accepted]]]) -> None:
        if self._group is group:
            self._group = None
        task = asyncio.get_running_loop().create_task(self._publish(group))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._waiting:
            self._flush(self._waiting.popleft())

    async def _publish(self, group: list[tuple[Publish, asyncio.Future[Accepted]]]) -> None:
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
