"""Observability benchmarks (issue 4). Prints numbers; asserts nothing.

    python -m tests.bench.bench_observability overhead [--messages 200000] [--rounds 5]
    python -m tests.bench.bench_observability once [--observability off] [--messages N]
    python -m tests.bench.bench_observability scrape [--pools 20] [--scrapes 200]

overhead: the engine benchmark's throughput run (Dispatcher.publish in batches of 1,000, a
no-op python sink, concurrency 64, memory store), alternately with observability on
(metrics, tracing with the API only, JSON logging at INFO to /dev/null) and off
(`observability=False`, logging off). Reports the median over rounds of end-to-end
messages/s and of process CPU per message (steadier when the machine is shared).
once: one such run, on or off, for an instruction counter (`valgrind --tool=callgrind`):
counts are exact where a shared machine's timings scatter by tens of percent, and two runs
that differ only in --messages cancel out the start-up.
scrape: 20 pools that have delivered, retried and dead-lettered work; GET /metrics over
loopback, timing each scrape, and the loop lag measured meanwhile by a ticking task.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import statistics
import sys
import time
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from dispatcher import Dispatcher, Publish
from dispatcher.app import create_app
from dispatcher.errors import Retry
from dispatcher.message import Message
from dispatcher.observe import logs
from dispatcher.server import tune_gc, tune_process
from dispatcher.state import DISPATCHER

from .. import factories
from . import handlers

PAYLOAD = b'{"user": 42, "event": "click", "path": "/home"}'


async def flaky(message: Message) -> None:
    """Fails one message in four (by id), so retries and dead letters have series too."""
    if hash(message.id) % 4 == 0:
        raise Retry("flaky")


def _settings(pools: int = 1, handler: str = "tests.bench.handlers:noop", **pool: Any) -> Any:
    return factories.settings(
        store={"url": "memory://", "min_free_bytes": 0},
        auth={"disabled": True},
        pools={
            f"bench{i}": {
                "concurrency": 64,
                "max_backlog": 10_000_000,
                "sink": {"type": "python", "handler": handler},
                **pool,
            }
            for i in range(pools)
        },
        routes=[{"match": f"bench{i}.>", "pools": [f"bench{i}"]} for i in range(pools)],
    )


async def _run(observability: bool, messages: int, batch: int) -> tuple[float, float]:
    dispatcher = Dispatcher(_settings(), observability=observability)
    await dispatcher.start()
    handlers.reset(messages)
    cpu, started = time.process_time(), time.perf_counter()
    for _ in range(messages // batch):
        await dispatcher.publish([Publish("bench0.click", PAYLOAD) for _ in range(batch)])
    await asyncio.wait_for(handlers.state["done"].wait(), timeout=600)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await dispatcher.stop()
    return messages / elapsed, cpu / messages * 1e6


def _measured(on: bool, messages: int, batch: int) -> tuple[float, float]:
    # The previous run's Dispatcher waits in reference cycles for a full collection, which
    # would otherwise land in this run (the second of each round: "on" paid 5-14% for it).
    gc.collect()
    return asyncio.run(_run(on, messages, batch))


def overhead(messages: int, batch: int, rounds: int) -> None:
    with open(os.devnull, "w") as null:
        output = logs.configure("INFO", stream=null)
        results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        try:
            asyncio.run(_run(True, messages // 4, batch))  # warm-up: imports, allocator
            tune_gc()  # as `dispatcher serve` runs
            for _ in range(rounds):
                for on in (False, True):
                    logging.getLogger().setLevel(logging.INFO if on else logging.CRITICAL)
                    results[on].append(_measured(on, messages, batch))
        finally:
            output.stop()
    rate = {on: statistics.median(r[0] for r in results[on]) for on in results}
    cpu = {on: statistics.median(r[1] for r in results[on]) for on in results}
    # Each round's own ratio too: a busy spell moves both runs of a round alike.
    pairs = list(zip(results[False], results[True], strict=True))
    paired_rate = statistics.median(1 - on[0] / off[0] for off, on in pairs)
    paired_cpu = statistics.median(on[1] / off[1] - 1 for off, on in pairs)
    print(
        f"overhead messages={messages} batch={batch} rounds={rounds} (medians):\n"
        f"  off: {rate[False]:,.0f} messages/s, {cpu[False]:.2f} us CPU/message\n"
        f"  on:  {rate[True]:,.0f} messages/s, {cpu[True]:.2f} us CPU/message\n"
        f"  cost: {100 * (1 - rate[True] / rate[False]):.1f}% throughput, "
        f"{100 * (cpu[True] / cpu[False] - 1):.1f}% CPU per message\n"
        f"  cost, median of the rounds' own ratios: {100 * paired_rate:.1f}% throughput, "
        f"{100 * paired_cpu:.1f}% CPU per message"
    )


def once(on: bool, messages: int, batch: int) -> None:
    with open(os.devnull, "w") as null:
        output = logs.configure("INFO" if on else "CRITICAL", stream=null)
        try:
            rate, cpu = asyncio.run(_run(on, messages, batch))
        finally:
            output.stop()
    print(
        f"once observability={'on' if on else 'off'} messages={messages} batch={batch}: "
        f"{rate:,.0f} messages/s, {cpu:.2f} us CPU/message"
    )


async def _tick(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - started - 0.001)


async def scrape(pools: int, scrapes: int) -> None:
    retry = {"max_attempts": 2, "initial_backoff": 0.01, "max_backoff": 0.01}
    settings = _settings(pools, handler="tests.bench.bench_observability:flaky", retry=retry)
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        dispatcher = app[DISPATCHER]
        for i in range(pools):
            await dispatcher.publish([Publish(f"bench{i}.x", PAYLOAD) for _ in range(200)])
        await asyncio.sleep(1.0)
        lags: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.create_task(_tick(lags, stop))
        times: list[float] = []
        size = 0
        for _ in range(scrapes):
            started = time.perf_counter()
            response = await client.get("/metrics")
            size = len(await response.read())
            times.append(time.perf_counter() - started)
        stop.set()
        await ticker
    times.sort()
    print(
        f"scrape pools={pools} n={scrapes} ({size:,} bytes, text format): "
        f"median {statistics.median(times) * 1000:.2f} ms, "
        f"p99 {times[int(len(times) * 0.99) - 1] * 1000:.2f} ms, max {times[-1] * 1000:.2f} ms; "
        f"loop lag meanwhile: max {max(lags) * 1000:.2f} ms"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["overhead", "once", "scrape"])
    parser.add_argument("--observability", choices=["on", "off"], default="on")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pools", type=int, default=20)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args(argv)
    tune_process()  # as `dispatcher serve` does
    if args.kind == "overhead":
        overhead(args.messages, args.batch, args.rounds)
    elif args.kind == "once":
        once(args.observability == "on", args.messages, args.batch)
    else:
        asyncio.run(scrape(args.pools, args.scrapes))


if __name__ == "__main__":
    sys.exit(main())
