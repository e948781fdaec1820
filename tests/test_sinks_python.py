"""The python sink with handlers defined here, referenced as "tests.test_sinks_python:...".

Handlers record what they saw in `SEEN`, keyed by message id, so tests do not interfere."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from functools import partial

import pytest

from dispatcher.config import PythonSinkConfig, SecurityConfig
from dispatcher.errors import ConfigError, Permanent, Retry
from dispatcher.message import Message
from dispatcher.sinks import SinkContext, build_sink
from dispatcher.sinks.python import PythonSink

from . import factories

SEEN: dict[str, tuple[str, str, bytes]] = {}  # message id -> (kind, thread name, payload)


def sync_handler(message: Message) -> None:
    SEEN[message.id] = ("sync", threading.current_thread().name, message.payload)


async def async_handler(message: Message) -> None:
    await asyncio.sleep(0)
    SEEN[message.id] = ("async", threading.current_thread().name, message.payload)


def slow_sync_handler(message: Message) -> None:
    time.sleep(0.3)  # blocks its thread, never the loop
    SEEN[message.id] = ("slow", threading.current_thread().name, message.payload)


def retry_handler(message: Message) -> None:
    raise Retry("downstream busy", retry_after=12.0)


async def permanent_handler(message: Message) -> None:
    raise Permanent("malformed order")


def crashing_handler(message: Message) -> None:
    raise KeyError("customer_id")


class AsyncCallable:
    async def __call__(self, message: Message) -> None:
        SEEN[message.id] = ("callable", threading.current_thread().name, message.payload)


callable_handler = AsyncCallable()
not_callable = 42


job = partial(factories.job, pool="analytics", tag="t.x", payload=b'{"n":1}')


@pytest.fixture
async def started() -> AsyncIterator[list[PythonSink]]:
    sinks: list[PythonSink] = []
    yield sinks
    for s in sinks:
        await s.close()


async def make(name: str, started: list[PythonSink]) -> PythonSink:
    sink = PythonSink("analytics", PythonSinkConfig(handler=f"tests.test_sinks_python:{name}"))
    await sink.start()
    started.append(sink)
    return sink


async def test_sync_handler_runs_in_a_worker_thread(started: list[PythonSink]) -> None:
    sink = await make("sync_handler", started)
    await sink.deliver(job("p-sync"), 1)
    kind, thread, payload = SEEN["p-sync"]
    assert (kind, payload) == ("sync", b'{"n":1}')
    assert thread.startswith("dispatcher-python-analytics")


async def test_async_handler_is_awaited_on_the_loop(started: list[PythonSink]) -> None:
    sink = await make("async_handler", started)
    await sink.deliver(job("p-async"), 1)
    assert SEEN["p-async"] == ("async", threading.current_thread().name, b'{"n":1}')


async def test_async_callable_object(started: list[PythonSink]) -> None:
    sink = await make("callable_handler", started)
    await sink.deliver(job("p-callable"), 1)
    assert SEEN["p-callable"][0] == "callable"


async def test_slow_sync_handler_does_not_block_the_loop(started: list[PythonSink]) -> None:
    sink = await make("slow_sync_handler", started)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        # Two at once: both threads sleep together, the loop keeps ticking.
        started_at = time.monotonic()
        await asyncio.gather(sink.deliver(job("p-slow-1"), 1), sink.deliver(job("p-slow-2"), 1))
        elapsed = time.monotonic() - started_at
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert SEEN["p-slow-1"][0] == SEEN["p-slow-2"][0] == "slow"
    assert ticks >= 10  # the loop ran during the 0.3 s sleeps
    assert elapsed < 0.55  # ran in parallel, not one after the other


async def test_retry_propagates_with_retry_after(started: list[PythonSink]) -> None:
    sink = await make("retry_handler", started)
    with pytest.raises(Retry) as info:
        await sink.deliver(job("p-retry"), 1)
    assert info.value.retry_after == 12.0
    assert str(info.value) == "downstream busy"


async def test_permanent_propagates(started: list[PythonSink]) -> None:
    sink = await make("permanent_handler", started)
    with pytest.raises(Permanent, match="malformed order"):
        await sink.deliver(job("p-perm"), 1)


async def test_other_exceptions_propagate_as_they_are(started: list[PythonSink]) -> None:
    sink = await make("crashing_handler", started)
    with pytest.raises(KeyError, match="customer_id"):
        await sink.deliver(job("p-crash"), 1)


@pytest.mark.parametrize(
    ("handler", "problem"),
    [
        ("tests.no_such_module:handler", "cannot import 'tests.no_such_module'"),
        ("tests.test_sinks_python:missing", "has no 'missing'"),
        ("tests.test_sinks_python:not_callable", "is not callable"),
        ("no_colon_here", "expected 'package.module:function'"),
    ],
)
async def test_bad_handler_is_a_config_error(handler: str, problem: str) -> None:
    sink = PythonSink("analytics", PythonSinkConfig(handler=handler))
    with pytest.raises(ConfigError) as info:
        await sink.start()
    assert info.value.path == "pools.analytics.sink.handler"
    assert problem in str(info.value)
    await sink.close()


async def test_build_sink_makes_a_python_sink(started: list[PythonSink]) -> None:
    ctx = SinkContext(SecurityConfig())
    try:
        sink = build_sink(
            "analytics", PythonSinkConfig(handler="tests.test_sinks_python:async_handler"), ctx
        )
        assert isinstance(sink, PythonSink)
        await sink.start()
        started.append(sink)
        await sink.deliver(job("p-built"), 1)
        assert SEEN["p-built"][0] == "async"
    finally:
        await ctx.close()
