"""Receiver-protection benchmark (issue 14). Prints numbers; asserts nothing.

    python -m tests.bench.bench_protection [--store sqlite|memory|redis] [--messages 20000]
        [--rounds 5] [--concurrency 64]
    python -m tests.bench.bench_protection --micro

What the circuit breaker and adaptive concurrency cost on the hot path: a webhook pool
delivers N messages (published in batches of 1,000) to a receiver in a process of its own
that answers 200 at once, alternately with both off and with both on (`circuit.enabled`,
`adaptive.enabled` with `min_concurrency` = `concurrency`, so the limit cannot move and only
the bookkeeping differs). End to end = first publish to last delivery written. Reports the
median over rounds of messages/s and of this process's CPU per message (steadier when the
machine is shared), the difference, and the median of each round's own on/off ratios (the
two runs of a round take turns going first). --micro times the bookkeeping alone: what the
gate adds to one attempt, off and on.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from dispatcher import Dispatcher, Publish
from dispatcher.circuit import PASS
from dispatcher.config import AdaptiveConfig, CircuitConfig, PoolConfig, WebhookSinkConfig
from dispatcher.gate import Gate
from dispatcher.server import tune_process

from .. import factories
from ..kit.redis import URL as REDIS_URL
from ..kit.redis import drop_prefix

PAYLOAD = b'{"user": 42, "event": "click", "path": "/home"}'

# The receiver: an aiohttp server in a process of its own, serving until stdin closes.
RECEIVER = """
import asyncio, sys
from aiohttp import web

async def ok(request):
    await request.read()
    return web.Response(text="ok")

async def serve():
    app = web.Application()
    app.router.add_post("/{name}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()

asyncio.run(serve())
"""


def _prefix(directory: str) -> str:
    """The Redis key prefix of one run (its temporary directory's name)."""
    return f"bench-protection-{Path(directory).name}"


def _settings(url: str, store: str, directory: str, concurrency: int, protected: bool) -> Any:
    pool: dict[str, Any] = {"concurrency": concurrency, "max_backlog": 10_000_000}
    if protected:
        pool["circuit"] = {"enabled": True}
        pool["adaptive"] = {"enabled": True, "min_concurrency": concurrency}
    store_url = {
        "sqlite": f"sqlite:///{directory}/bench.db",
        "memory": "memory://",
        "redis": REDIS_URL,  # under a prefix of this run's own, deleted after it
    }[store]
    return factories.webhook_settings(
        url,
        {"bench": pool},
        [{"match": "bench.>", "pools": ["bench"]}],
        store={"url": store_url, "prefix": _prefix(directory), "min_free_bytes": 0},
    )


async def _run(
    url: str, store: str, messages: int, concurrency: int, protected: bool
) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as directory:
        dispatcher = Dispatcher(_settings(url, store, directory, concurrency, protected))
        await dispatcher.start()
        cpu, started = time.process_time(), time.perf_counter()
        for start in range(0, messages, 1000):
            batch = min(1000, messages - start)
            await dispatcher.publish([Publish("bench.click", PAYLOAD) for _ in range(batch)])
        while dispatcher.attempt_totals()["bench"][0] < messages:
            await asyncio.sleep(0.005)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        failed = dispatcher.attempt_totals()["bench"][1]
        await dispatcher.stop()
        if store == "redis":
            await drop_prefix(_prefix(directory), REDIS_URL)
    if failed:
        print(f"  ({failed} attempts failed: the numbers include retries)")
    return messages / elapsed, cpu / messages * 1e6


def _gate(on: bool) -> Gate:
    config = PoolConfig(
        sink=WebhookSinkConfig(url="https://example.com/"),
        concurrency=64,
        circuit=CircuitConfig(enabled=on),
        adaptive=AdaptiveConfig(enabled=on, min_concurrency=64 if on else 1),
    )
    return Gate("bench", config, time.monotonic, moved=lambda: None)


def micro(calls: int = 1_000_000) -> None:
    """What the pool runs per attempt for its gate (the check, then `after` when on), with
    a clock that moves 0.1 ms per attempt so the breaker's window turns as it would."""
    statement = (
        "t += 1e-4\n"
        "if gate.breaker_on or gate.adaptive is not None:\n"
        "    gate.after(PASS, t - 0.002, t, False, False, 64)"
    )

    async def measure() -> None:  # the gate makes an asyncio.Event: on a loop, as in a pool
        print("micro: what the gate's bookkeeping adds to one attempt (best of 3)")
        for on in (False, True):
            names = {"gate": _gate(on), "PASS": PASS}
            runs = timeit.repeat(statement, "t = 0.0", number=calls, repeat=3, globals=names)
            print(f"  gate {'on ' if on else 'off'}: {min(runs) / calls * 1e9:,.0f} ns per attempt")

    asyncio.run(measure())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="sqlite", choices=["sqlite", "memory", "redis"])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--micro", action="store_true", help="time the bookkeeping alone")
    args = parser.parse_args(argv)
    if args.micro:
        micro()
        return
    tune_process()  # as `dispatcher serve` does
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        url = f"http://127.0.0.1:{int(receiver.stdout.readline())}"
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        run = (args.store, args.messages, args.concurrency)
        asyncio.run(_run(url, args.store, args.messages // 4, args.concurrency, True))  # warm-up
        for i in range(args.rounds):
            for protected in (False, True) if i % 2 == 0 else (True, False):
                results[protected].append(asyncio.run(_run(url, *run, protected)))
    finally:
        if receiver.stdin is not None:
            receiver.stdin.close()
        receiver.wait(timeout=10)
    rate = {on: statistics.median(r[0] for r in results[on]) for on in results}
    cpu = {on: statistics.median(r[1] for r in results[on]) for on in results}
    print(
        f"protection store={args.store} messages={args.messages} concurrency={args.concurrency} "
        f"rounds={args.rounds} (medians, webhook to a receiver process):\n"
        f"  off: {rate[False]:,.0f} messages/s, {cpu[False]:.1f} us CPU/message\n"
        f"  on:  {rate[True]:,.0f} messages/s, {cpu[True]:.1f} us CPU/message "
        "(circuit breaker and adaptive concurrency)\n"
        f"  cost: {100 * (1 - rate[True] / rate[False]):.1f}% throughput, "
        f"{100 * (cpu[True] / cpu[False] - 1):.1f}% CPU per message"
    )
    # Each round runs off then on back to back: the median of the rounds' own ratios is
    # less moved by what else the machine did meanwhile than the ratio of the medians.
    pairs = list(zip(results[False], results[True], strict=True))
    paired_rate = statistics.median(on[0] / off[0] for off, on in pairs)
    paired_cpu = statistics.median(on[1] / off[1] for off, on in pairs)
    print(
        f"  paired (median of each round's on/off): throughput {paired_rate:.3f}, "
        f"CPU per message {paired_cpu:.3f}"
    )
    for on in (False, True):
        rounds = ", ".join(f"{r:,.0f}" for r, _ in results[on])
        print(f"  {'on ' if on else 'off'} rounds: {rounds} messages/s")


if __name__ == "__main__":
    sys.exit(main())
