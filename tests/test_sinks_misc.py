"""The demo, log and websocket sinks (the last over real sockets with a real ws client)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from dispatcher.config import DemoSinkConfig, LogSinkConfig, SecurityConfig, WebsocketSinkConfig
from dispatcher.errors import Permanent, Retry
from dispatcher.sinks import SinkContext, SubscriberHub, build_sink
from dispatcher.sinks.demo import DemoSink
from dispatcher.sinks.log import LogSink
from dispatcher.sinks.websocket import WebsocketSink

from . import factories

job = partial(
    factories.job, pool="push", tag="orders.created", payload=b'{"total": 12.5, "items":[1,2]}'
)


def draws(*values: float) -> Callable[[], float]:
    return iter(values).__next__


# --- demo ------------------------------------------------------------------------------------


async def test_demo_succeeds_above_fail_rate() -> None:
    sink = DemoSink("demo", DemoSinkConfig(fail_rate=0.5), random=draws(0.5, 0.99))
    await sink.deliver(job(), 1)
    await sink.deliver(job(), 1)


async def test_demo_retryable_and_permanent_failures() -> None:
    sink = DemoSink("demo", DemoSinkConfig(fail_rate=0.5), random=draws(0.3, 0.049, 0.051))
    with pytest.raises(Retry) as info:
        await sink.deliver(job(), 1)
    assert not isinstance(info.value, Permanent)
    assert "demo failure" in str(info.value)
    with pytest.raises(Permanent, match="demo permanent failure"):
        await sink.deliver(job(), 1)
    with pytest.raises(Retry) as info:
        await sink.deliver(job(), 1)
    assert not isinstance(info.value, Permanent)


async def test_demo_never_fails_at_zero_and_always_at_one() -> None:
    await DemoSink("demo", DemoSinkConfig(fail_rate=0.0), random=draws(0.0)).deliver(job(), 1)
    with pytest.raises(Retry):
        await DemoSink("demo", DemoSinkConfig(fail_rate=1.0), random=draws(0.999)).deliver(job(), 1)


async def test_demo_latency_with_jitter() -> None:
    sink = DemoSink("demo", DemoSinkConfig(latency=0.1), random=draws(1.0, 0.5))
    started = time.monotonic()
    await sink.deliver(job(), 1)
    assert time.monotonic() - started >= 0.14  # 0.1 s x 1.5 at the top of the jitter


def test_build_sink_makes_demo_and_log_sinks() -> None:
    ctx = SinkContext(SecurityConfig())
    assert isinstance(build_sink("p", DemoSinkConfig(), ctx), DemoSink)
    assert isinstance(build_sink("p", LogSinkConfig(), ctx), LogSink)
    assert isinstance(build_sink("p", WebsocketSinkConfig(), ctx), WebsocketSink)


# --- log -------------------------------------------------------------------------------------


async def test_log_sink_logs_metadata_never_the_payload(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dispatcher.sink.log")
    sink = LogSink("audit", LogSinkConfig())
    await sink.deliver(job("m-42", tag="user.signup", payload=b'{"password":"SECRET-PAYLOAD"}'), 2)
    [record] = caplog.records
    assert record.name == "dispatcher.sink.log"
    assert record.levelno == logging.INFO
    text = record.getMessage()
    for part in ("id=m-42", "tag=user.signup", "pool=audit", "attempt=2", "bytes=29"):
        assert part in text
    assert "SECRET" not in caplog.text
    assert "SECRET" not in repr(record.__dict__)


async def test_log_sink_uses_its_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dispatcher.sink.log")
    await LogSink("audit", LogSinkConfig(level="debug")).deliver(job(), 1)
    assert caplog.records == []
    await LogSink("audit", LogSinkConfig(level="warning")).deliver(job(), 1)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


# --- websocket -------------------------------------------------------------------------------

HUB = web.AppKey("hub", SubscriberHub)


async def _subscribe(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await request.app[HUB].serve(ws, request.query["tag"])
    return ws


@pytest.fixture
async def hub() -> AsyncIterator[SubscriberHub]:
    ctx = SinkContext(SecurityConfig())
    yield ctx.hub
    await ctx.close()


@pytest.fixture
async def client(
    hub: SubscriberHub, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> TestClient[Any, Any]:
    app = web.Application()
    app[HUB] = hub
    app.router.add_get("/v1/subscribe", _subscribe)
    return await aiohttp_client(app)


async def wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.005)


class FakeConsumer:
    """A real ws client that answers every frame as `mode` says and records what it got."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, mode: str) -> None:
        self.ws = ws
        self.mode = mode
        self.frames: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            self.raw.append(msg.data)
            frame = json.loads(msg.data)
            self.frames.append(frame)
            if "id" not in frame:
                continue
            if self.mode == "ack":
                await self.ws.send_json({"ack": frame["id"]})
            elif self.mode == "nack":
                await self.ws.send_json({"nack": frame["id"], "error": "inbox full"})
            elif self.mode == "hangup":
                await self.ws.close()
            # "silent": never answers

    async def stop(self) -> None:
        await self.ws.close()
        await self.task


@pytest.fixture
async def connect(
    client: TestClient[Any, Any], hub: SubscriberHub
) -> AsyncIterator[Callable[[str, str], Awaitable[FakeConsumer]]]:
    consumers: list[FakeConsumer] = []

    async def _connect(pattern: str, mode: str = "ack") -> FakeConsumer:
        before = len(hub)
        ws = await client.ws_connect(f"/v1/subscribe?tag={pattern}")
        consumer = FakeConsumer(ws, mode)
        consumers.append(consumer)
        await wait_for(lambda: len(hub) == before + 1)
        return consumer

    yield _connect
    for consumer in consumers:
        await consumer.stop()


def ws_sink(hub: SubscriberHub, ack_timeout: float = 5.0) -> WebsocketSink:
    return WebsocketSink("push", WebsocketSinkConfig(ack_timeout=ack_timeout), hub)


async def test_websocket_delivery_is_acked(
    hub: SubscriberHub, connect: Callable[[str, str], Awaitable[FakeConsumer]]
) -> None:
    consumer = await connect("orders.*", "ack")
    payload = b'{"total": 12.5, "items":[1,2]}'
    await ws_sink(hub).deliver(job("m-7", payload=payload, headers={"ce-source": "/s"}), 3)
    [frame] = consumer.frames
    assert frame == {
        "id": "m-7",
        "tag": "orders.created",
        "pool": "push",
        "attempt": 3,
        "payload": {"total": 12.5, "items": [1, 2]},
        "headers": {"ce-source": "/s"},
    }
    assert payload in consumer.raw[0].encode()  # embedded as it was, not re-encoded


async def test_websocket_non_json_payloads(
    hub: SubscriberHub, connect: Callable[[str, str], Awaitable[FakeConsumer]]
) -> None:
    consumer = await connect("orders.*", "ack")
    sink = ws_sink(hub)
    await sink.deliver(job("m-text", payload=b"hello {not json"), 1)
    await sink.deliver(job("m-bin", payload=b"\xff\x00\x01"), 1)
    text, binary = consumer.frames
    assert text["payload"] == "hello {not json"
    assert "encoding" not in text
    assert binary["encoding"] == "base64"
    assert base64.b64decode(binary["payload"]) == b"\xff\x00\x01"


async def test_websocket_nack_is_retried(
    hub: SubscriberHub, connect: Callable[[str, str], Awaitable[FakeConsumer]]
) -> None:
    await connect("orders.*", "nack")
    with pytest.raises(Retry, match="nack: inbox full") as info:
        await ws_sink(hub).deliver(job(), 1)
    assert not isinstance(info.value, Permanent)


async def test_websocket_without_subscriber_is_retried(hub: SubscriberHub) -> None:
    with pytest.raises(Retry, match=re.escape("no websocket subscriber for tag 'orders.created'")):
        await ws_sink(hub).deliver(job(), 1)


async def test_websocket_ack_timeout_is_retried(
    hub: SubscriberHub, connect: Callable[[str, str], Awaitable[FakeConsumer]]
) -> None:
    consumer = await connect("orders.*", "silent")
    with pytest.raises(Retry, match=re.escape("no websocket ack within 0.2 s")):
        await ws_sink(hub, ack_timeout=0.2).deliver(job(), 1)
    assert len(consumer.frames) == 1  # it was sent, just never acked


async def test_websocket_disconnect_before_ack_is_retried(
    hub: SubscriberHub, connect: Callable[[str, str], Awaitable[FakeConsumer]]
) -> None:
    await connect("orders.*", "hangup")
    started = time.monotonic()
    with pytest.raises(Retry, match="disconnected"):
        await ws_sink(hub, ack_timeout=5.0).deliver(job(), 1)
    assert time.monotonic() - started < 2  # failed at the disconnect, not at the timeout
    await wait_for(lambda: len(hub) == 0)


async def test_websocket_cancelled_attempt_forgets_its_ack(
    hub: SubscriberHub, connect: Callable[[str, str], Awaitable[FakeConsumer]]
) -> None:
    # The pool enforces its timeout by cancelling deliver(): nothing may stay behind.
    consumer = await connect("orders.*", "silent")
    attempt = asyncio.create_task(ws_sink(hub).deliver(job("m-cancel"), 1))
    await wait_for(lambda: len(consumer.frames) == 1)
    subscriber = hub.pick("orders.created")
    assert subscriber is not None
    assert subscriber.awaiting == 1
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    assert subscriber.awaiting == 0
    await consumer.ws.send_json({"ack": "m-cancel"})  # a late ack is harmless
    consumer.mode = "ack"
    await ws_sink(hub).deliver(job("m-next"), 1)


async def test_websocket_patterns_and_wildcards(
    hub: SubscriberHub, connect: Callable[[str, str], Awaitable[FakeConsumer]]
) -> None:
    orders = await connect("orders.*", "ack")
    clicks = await connect("clicks.>", "ack")
    exact = await connect("user.signup", "ack")
    sink = ws_sink(hub)
    await sink.deliver(job("a", tag="orders.created"), 1)
    await sink.deliver(job("b", tag="clicks.page.home"), 1)
    await sink.deliver(job("c", tag="clicks.button"), 1)
    await sink.deliver(job("d", tag="user.signup"), 1)
    for unmatched in ("orders.created.eu", "clicks", "user.signup.eu", "orders"):
        with pytest.raises(Retry, match="no websocket subscriber"):
            await sink.deliver(job("x", tag=unmatched), 1)
    assert [f["id"] for f in orders.frames] == ["a"]
    assert [f["id"] for f in clicks.frames] == ["b", "c"]
    assert [f["id"] for f in exact.frames] == ["d"]


async def test_websocket_round_robin(
    hub: SubscriberHub, connect: Callable[[str, str], Awaitable[FakeConsumer]]
) -> None:
    first = await connect("jobs.>", "ack")
    second = await connect("jobs.*", "ack")
    sink = ws_sink(hub)
    for i in range(6):
        await sink.deliver(job(f"r{i}", tag="jobs.run"), 1)
    assert len(first.frames) == len(second.frames) == 3


async def test_websocket_concurrent_deliveries_same_subscriber(
    hub: SubscriberHub, connect: Callable[[str, str], Awaitable[FakeConsumer]]
) -> None:
    consumer = await connect("orders.*", "ack")
    sink = ws_sink(hub)
    # The same id twice (two pools fan out one message) plus others, all in flight at once.
    await asyncio.gather(
        *(sink.deliver(job(f"c{i}"), 1) for i in range(20)),
        ws_sink(hub).deliver(job("c0", pool="other"), 1),
    )
    assert len(consumer.frames) == 21


async def test_websocket_bad_pattern_is_closed(client: TestClient[Any, Any]) -> None:
    ws = await client.ws_connect("/v1/subscribe?tag=orders.>.x")
    msg = await ws.receive()
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == aiohttp.WSCloseCode.POLICY_VIOLATION
    await ws.close()


async def test_websocket_bad_reply_is_answered(
    hub: SubscriberHub, connect: Callable[[str, str], Awaitable[FakeConsumer]]
) -> None:
    consumer = await connect("orders.*", "silent")
    await consumer.ws.send_str("not json")
    await consumer.ws.send_str('{"hello": 1}')
    await wait_for(lambda: len(consumer.frames) == 2)
    assert consumer.frames[0]["error"].startswith("bad frame")
    assert consumer.frames[1]["error"].startswith("bad frame")


async def test_hub_close_disconnects_subscribers(
    hub: SubscriberHub, connect: Callable[[str, str], Awaitable[FakeConsumer]]
) -> None:
    consumer = await connect("orders.*", "silent")
    await hub.close()
    await asyncio.wait_for(consumer.task, 5)
    assert consumer.ws.closed
    assert consumer.ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
    await wait_for(lambda: len(hub) == 0)
