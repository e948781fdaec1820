"""The websocket sink: pushes each message to a connected subscriber and waits for its ack.

Clients connect to ``GET /v1/subscribe?tag=<pattern>``; the HTTP layer prepares the WebSocket
and hands it to `SubscriberHub.serve`. Patterns match tags exactly as routes do (``*`` one
token, a final ``>`` one or more). Each delivery goes to one matching subscriber, in turn.

Frames to the client (text, JSON)::

    {"id": ..., "tag": ..., "pool": ..., "attempt": 1, "payload": <the payload>, "headers": {}}

The payload is embedded as JSON when it is valid JSON (its bytes as they are, not re-encoded),
else as a string; bytes that are not UTF-8 are sent as base64 with ``"encoding": "base64"``.
Frames from the client: ``{"ack": "<id>"}``, or ``{"nack": "<id>", "error": "..."}`` to fail
the attempt (retried). No subscriber, a disconnect before the ack, a nack or no ack within
`ack_timeout` are all retryable failures.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging

import aiohttp
import msgspec
from aiohttp import web

from ..config import WebsocketSinkConfig
from ..errors import Retry
from ..message import Job
from ..routing import Router
from ..tags import validate_pattern
from .base import Sink

logger = logging.getLogger("dispatcher.sink.websocket")


class _Frame(msgspec.Struct, omit_defaults=True):
    id: str
    tag: str
    pool: str
    attempt: int
    payload: msgspec.Raw | str
    headers: dict[str, str]
    encoding: str | None = None


class _Reply(msgspec.Struct):
    ack: str | None = None
    nack: str | None = None
    error: str | None = None


_encode = msgspec.json.Encoder().encode
_decode_reply = msgspec.json.Decoder(_Reply).decode
_decode_raw = msgspec.json.Decoder(msgspec.Raw).decode


def encode_frame(job: Job, attempt: int) -> bytes:
    message = job.message
    payload: msgspec.Raw | str
    encoding = None
    try:
        payload = _decode_raw(message.payload)  # validates without building objects
    except msgspec.DecodeError:
        try:
            payload = message.payload.decode()
        except UnicodeDecodeError:
            payload = base64.b64encode(message.payload).decode("ascii")
            encoding = "base64"
    return _encode(
        _Frame(message.id, message.tag, job.pool, attempt, payload, message.headers, encoding)
    )


class Subscriber:
    """One connected client: its pattern and the acks it owes."""

    __slots__ = ("_pending", "key", "pattern", "ws")

    def __init__(self, key: str, pattern: str, ws: web.WebSocketResponse[bool]) -> None:
        self.key = key
        self.pattern = pattern
        self.ws = ws
        # message id -> waiters, oldest first (one message may be sent twice, by two pools);
        # a waiter's result is None for an ack, else the error text.
        self._pending: dict[str, list[asyncio.Future[str | None]]] = {}

    def __repr__(self) -> str:
        return f"Subscriber({self.key}, {self.pattern!r})"

    @property
    def awaiting(self) -> int:
        """How many acks this subscriber owes."""
        return sum(len(waiters) for waiters in self._pending.values())

    def expect(self, msg_id: str) -> asyncio.Future[str | None]:
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(msg_id, []).append(waiter)
        return waiter

    def forget(self, msg_id: str, waiter: asyncio.Future[str | None]) -> None:
        waiters = self._pending.get(msg_id)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._pending[msg_id]

    def settle(self, msg_id: str, error: str | None) -> bool:
        """Resolve the oldest waiter for `msg_id`; False if none was waiting."""
        waiters = self._pending.get(msg_id)
        if not waiters:
            return False
        waiter = waiters.pop(0)
        if not waiters:
            del self._pending[msg_id]
        if not waiter.done():
            waiter.set_result(error)
        return True

    def fail_all(self, error: str) -> None:
        pending, self._pending = self._pending, {}
        for waiters in pending.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(error)

    async def send(self, data: bytes) -> None:
        await self.ws.send_frame(data, aiohttp.WSMsgType.TEXT)


class SubscriberHub:
    """The connected subscribers of a process, matched by tag pattern."""

    def __init__(self) -> None:
        self._subscribers: dict[str, Subscriber] = {}
        self._router = Router(())
        self._keys = itertools.count(1)
        self._turn = itertools.count()
        self._closed = False

    def __len__(self) -> int:
        return len(self._subscribers)

    def pick(self, tag: str) -> Subscriber | None:
        """A subscriber whose pattern matches `tag`, taking turns; None if there is none."""
        keys = self._router.route(tag)
        if not keys:
            return None
        return self._subscribers[keys[next(self._turn) % len(keys)]]

    async def serve(self, ws: web.WebSocketResponse[bool], pattern: str) -> None:
        """Serve one prepared WebSocket until it closes. The HTTP layer should check the
        pattern with `routing.validate_pattern` first, to answer 400 before the upgrade; here
        a bad pattern closes the socket with 1008 (policy violation)."""
        try:
            validate_pattern(pattern)
        except ValueError as exc:
            await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=str(exc).encode())
            return
        if self._closed:
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"shutting down")
            return
        subscriber = Subscriber(f"s{next(self._keys)}", pattern, ws)
        self._add(subscriber)
        try:
            async for frame in ws:
                if frame.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    await self._on_reply(subscriber, frame.data)
        finally:
            self._remove(subscriber)
            subscriber.fail_all("websocket subscriber disconnected before ack")

    async def close(self) -> None:
        """Close every subscriber (at shutdown, after the last delivery)."""
        self._closed = True
        subscribers = list(self._subscribers.values())
        await asyncio.gather(
            *(
                s.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"shutting down")
                for s in subscribers
            ),
            return_exceptions=True,
        )

    async def _on_reply(self, subscriber: Subscriber, data: str | bytes) -> None:
        try:
            reply = _decode_reply(data)
        except msgspec.DecodeError as exc:
            await _tell(subscriber, f"bad frame: {exc}")
            return
        if reply.ack is not None:
            subscriber.settle(reply.ack, None)
        elif reply.nack is not None:
            subscriber.settle(reply.nack, f"nack: {reply.error or 'no reason given'}")
        else:
            await _tell(subscriber, 'bad frame: expected {"ack": id} or {"nack": id}')

    def _add(self, subscriber: Subscriber) -> None:
        self._subscribers[subscriber.key] = subscriber
        self._rebuild()
        logger.info("websocket subscriber %s connected for %r", subscriber.key, subscriber.pattern)

    def _remove(self, subscriber: Subscriber) -> None:
        if self._subscribers.pop(subscriber.key, None) is not None:
            self._rebuild()
            logger.info("websocket subscriber %s disconnected", subscriber.key)

    def _rebuild(self) -> None:
        # Subscribers come and go rarely; a fresh Router keeps matching one cached lookup.
        self._router = Router((s.pattern, (key,)) for key, s in self._subscribers.items())


async def _tell(subscriber: Subscriber, error: str) -> None:
    # A send that fails means it is going away; its reader will see the close.
    with contextlib.suppress(ConnectionError, aiohttp.ClientError):
        await subscriber.send(_encode({"error": error}))


class WebsocketSink(Sink):
    kind = "websocket"

    def __init__(self, pool: str, config: WebsocketSinkConfig, hub: SubscriberHub) -> None:
        self.pool = pool
        self._ack_timeout = config.ack_timeout
        self._hub = hub

    async def deliver(self, job: Job, attempt: int) -> None:
        message = job.message
        subscriber = self._hub.pick(message.tag)
        if subscriber is None:
            raise Retry(f"no websocket subscriber for tag {message.tag!r}")
        data = encode_frame(job, attempt)
        waiter = subscriber.expect(message.id)
        try:
            try:
                await subscriber.send(data)
            except (ConnectionError, aiohttp.ClientError) as exc:
                raise Retry(f"websocket subscriber disconnected: {exc}") from None
            try:
                async with asyncio.timeout(self._ack_timeout):
                    error = await waiter
            except TimeoutError:
                raise Retry(f"no websocket ack within {self._ack_timeout:g} s") from None
        finally:
            subscriber.forget(message.id, waiter)
        if error is not None:
            raise Retry(error)
