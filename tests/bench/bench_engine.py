"""Engine benchmarks (issue 2). Prints numbers; asserts nothing.

    python -m tests.bench.bench_engine throughput [--store sqlite|memory] [--messages N]
        [--producers N] [--scheduled N]
    python -m tests.bench.bench_engine latency [--rates 100,1000,5000] [--seconds 10]
    python -m tests.bench.bench_engine backlog [--messages 1000000]
    python -m tests.bench.bench_engine drain [--messages 30000]

throughput: N messages published through Dispatcher.publish in batches of 1,000 to one pool
with a no-op python sink and concurrency 64; end to end = first publish to last delivery.
`--scheduled N` queues N jobs due in an hour first, as a pool with retries pending has.
latency: single messages offered at steady rates, open loop, through api.Singles (the path
of POST /v1/messages); publish called (the commit's wait included) to sink start: p50, p99,
p99.9.
backlog: N messages queued on a paused pool; the process's peak RSS.
drain: N messages queued on a paused pool, then resumed: the claim path alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

from dispatcher import Dispatcher, Publish
from dispatcher.bench import open_loop
from dispatcher.http.api import Singles
from dispatcher.server import tune_gc, tune_process

from .. import factories
from . import handlers


def _settings(store_url: str, handler: str, concurrency: int = 64, **pool: Any) -> Any:
    return factories.settings(
        store={"url": store_url, "min_free_bytes": 0},
        pools={
            "bench": {
                "concurrency": concurrency,
                "max_backlog": 10_000_000,
                "sink": {"type": "python", "handler": handler},
                **pool,
            }
        },
        routes=[{"match": "bench.>", "pools": ["bench"]}],
    )


def thread_cpu() -> dict[str, float]:
    """CPU seconds used so far by each thread of this process, by thread name (Linux /proc).
    Wall-clock rates swing with whatever else the machine runs; CPU per message does not."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def cpu_report(before: dict[str, float], after: dict[str, float], messages: int) -> str:
    parts = []
    for name in sorted(after, key=lambda n: -(after[n] - before.get(n, 0.0))):
        used = after[name] - before.get(name, 0.0)
        if used >= 0.05:
            parts.append(f"{name} {used / messages * 1e6:.1f}")
    return "CPU us/message: " + ", ".join(parts)


def _url(store: str, directory: str) -> str:
    return f"sqlite:///{directory}/bench.db" if store == "sqlite" else "memory://"


async def throughput(
    store: str, messages: int, batch: int, producers: int = 1, scheduled: int = 0
) -> float:
    with tempfile.TemporaryDirectory() as directory:
        settings = _settings(_url(store, directory), "tests.bench.handlers:noop")
        dispatcher = Dispatcher(settings)
        await dispatcher.start()
        if scheduled:  # as retries pending on a flaky receiver: due in an hour
            await dispatcher.publish([Publish("bench.click", b"{}", delay=3600.0)] * scheduled)
        handlers.reset(messages)
        payload = b'{"user": 42, "event": "click", "path": "/home"}'
        cpu_before = thread_cpu()
        started = time.perf_counter()
        batches = iter(range(messages // batch))

        async def producer() -> None:
            for _ in batches:  # shared: the producers take turns, batch by batch
                await dispatcher.publish([Publish("bench.click", payload) for _ in range(batch)])

        await asyncio.gather(*(producer() for _ in range(producers)))
        published = time.perf_counter()
        await asyncio.wait_for(handlers.state["done"].wait(), timeout=600)
        delivered = time.perf_counter()
        cpu_after = thread_cpu()
        commits = getattr(dispatcher.store, "commits", None)
        await dispatcher.stop()
    rate = messages / (delivered - started)
    print(
        f"throughput store={store} messages={messages} batch={batch} producers={producers}"
        f"{f' scheduled={scheduled}' if scheduled else ''}: "
        f"publish {messages / (published - started):,.0f}/s, "
        f"end to end {rate:,.0f} messages/s ({delivered - started:.2f} s)"
    )
    print(f"  {cpu_report(cpu_before, cpu_after, messages)}; store commits: {commits}")
    return rate


async def latency(store: str, rate: float, seconds: float) -> None:
    """Single messages offered at `rate` per second, open loop (each at its time, whatever
    became of the one before), through api.Singles as POST /v1/messages publishes them;
    from the publish call (the commit's wait included) to the sink starting the delivery."""
    with tempfile.TemporaryDirectory() as directory:
        settings = _settings(_url(store, directory), "tests.bench.handlers:record_start")
        dispatcher = Dispatcher(settings)
        await dispatcher.start()
        singles = Singles(dispatcher)
        handlers.reset()
        enqueued: dict[str, float] = {}

        async def one() -> None:
            # From the call, not its return: a pool that keeps up is handed the job as it
            # commits (Store.hand_off), so its delivery may start before publish returns.
            sent = time.perf_counter()
            accepted = await singles.publish(Publish("bench.latency", b"{}"))
            enqueued[accepted.id] = sent

        total = int(rate * seconds)
        await open_loop(one, total, 1 / rate)
        deadline = time.perf_counter() + 10
        while len(handlers.state["starts"]) < total and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        await dispatcher.stop()
    waits = sorted(
        handlers.state["starts"][i] - t
        for i, t in enqueued.items()
        if i in handlers.state["starts"]
    )
    q = statistics.quantiles(waits, n=1000, method="inclusive")
    print(
        f"latency store={store} offered={rate:g}/s n={len(waits)}: p50 {q[499] * 1000:.2f} ms, "
        f"p99 {q[989] * 1000:.2f} ms, p99.9 {q[998] * 1000:.2f} ms, max {waits[-1] * 1000:.2f} ms"
    )


async def backlog(messages: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        settings = _settings(_url("sqlite", directory), "tests.bench.handlers:noop")
        dispatcher = Dispatcher(settings)
        await dispatcher.start()
        await dispatcher.update_pool("bench", paused=True, actor="bench")
        started = time.perf_counter()
        for _ in range(messages // batch):
            await dispatcher.publish([Publish("bench.backlog", b'{"n": 1}') for _ in range(batch)])
        elapsed = time.perf_counter() - started
        info = await dispatcher.pool_info("bench")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"backlog: {info.backlog:,} queued on a paused pool in {elapsed:.1f} s; "
            f"peak RSS {rss:.0f} MB"
        )
        await dispatcher.stop()


async def drain(store: str, messages: int, batch: int) -> None:
    """The claim path alone: `messages` queued on a paused pool, then resumed; the rate at
    which the pool drains them (every job claimed, none handed over at enqueue)."""
    with tempfile.TemporaryDirectory() as directory:
        settings = _settings(_url(store, directory), "tests.bench.handlers:noop")
        dispatcher = Dispatcher(settings)
        await dispatcher.start()
        tune_gc()
        await dispatcher.update_pool("bench", paused=True, actor="bench")
        items = [Publish("bench.drain", b'{"n": 1}')] * batch
        for _ in range(messages // batch):
            await dispatcher.publish(items)
        before = thread_cpu()
        started = time.perf_counter()
        await dispatcher.update_pool("bench", paused=False, actor="bench")
        while dispatcher.attempt_totals()["bench"][0] < messages:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        print(
            f"drain store={store} messages={messages:,}: {messages / elapsed:,.0f} messages/s "
            f"({elapsed:.2f} s)\n  {cpu_report(before, thread_cpu(), messages)}"
        )
        await dispatcher.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["throughput", "latency", "backlog", "drain"])
    parser.add_argument("--store", default="sqlite", choices=["sqlite", "memory"])
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--producers", type=int, default=1, help="batches in flight at once")
    parser.add_argument(
        "--scheduled", type=int, default=0, help="throughput: jobs due in an hour, queued first"
    )
    parser.add_argument("--rates", default="100,1000,5000", help="latency: offered msgs/s")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args(argv)
    tune_process()  # measure what `dispatcher serve` runs: the same GIL switch interval
    if args.kind == "throughput":
        asyncio.run(
            throughput(
                args.store, args.messages or 100_000, args.batch, args.producers, args.scheduled
            )
        )
    elif args.kind == "latency":
        for rate in args.rates.split(","):
            asyncio.run(latency(args.store, float(rate), args.seconds))
    elif args.kind == "drain":
        asyncio.run(drain(args.store, args.messages or 30_000, args.batch))
    else:
        asyncio.run(backlog(args.messages or 1_000_000, args.batch))


if __name__ == "__main__":
    sys.exit(main())
