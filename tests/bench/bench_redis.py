"""Redis store benchmarks (issue 12). Prints numbers; asserts nothing.

    python -m tests.bench.bench_redis e2e [--processes 1] [--messages 100000]
        [--fsync everysec|always] [--rounds 1] [--stats]
    python -m tests.bench.bench_redis backlog [--messages 1000000]

e2e: a private redis-server (appendonly yes, appendfsync as given) and N `dispatcher serve`
processes on it; N messages POSTed in batches of 1,000 (4 in flight, alternating between
the processes) to one pool with a no-op python sink and concurrency 64 per process; end to
end = first POST to the moment the store holds nothing undelivered.
backlog: N messages queued on a paused pool of one process; then the median and p99 of 20
status look-ups, DLQ pages and /metrics scrapes, and the process's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from tests.kit.instance import HEADERS, TOKEN, Instance
from tests.kit.redis import RedisServer

BATCH = 1000
PAYLOAD = {"user": 42, "event": "click", "path": "/home"}


def _config(url: str, **pool: Any) -> dict[str, Any]:
    return {
        "store": {"url": url, "prefix": "bench", "min_free_bytes": 0},
        "auth": {"tokens": [{"name": "bench", "token": TOKEN, "scopes": ["admin"]}]},
        "pools": {
            "bench": {
                "concurrency": 64,
                "max_backlog": 100_000_000,
                "sink": {"type": "python", "handler": "tests.bench.handlers:noop"},
                **pool,
            }
        },
        "routes": [{"match": ">", "pools": ["bench"]}],
        "demo": {"traffic": 0},
    }


async def _post(http: aiohttp.ClientSession, bases: list[str], messages: int) -> None:
    body = [{"tag": "bench.click", "payload": PAYLOAD}] * BATCH
    batches = iter(range(messages // BATCH))

    async def producer() -> None:
        for i in batches:
            async with http.post(f"{bases[i % len(bases)]}/v1/messages/batch", json=body) as r:
                if r.status != 202:
                    raise RuntimeError(f"{r.status}: {await r.text()}")

    await asyncio.gather(*(producer() for _ in range(4)))


async def _undone(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(f"{base}/v1/pools/bench") as r:
        info = await r.json()
    return int(info["backlog"] + info["in_flight"] + info["scheduled"])


async def _server_stats(url: str, messages: int) -> None:
    """What the server spent per message: CPU, and microseconds per command (scripts
    include the commands they ran, which are listed too)."""
    client = aioredis.from_url(url)
    try:
        cpu = await client.info("cpu")
        commands = await client.info("commandstats")
    finally:
        await client.aclose()
    spent = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    print(f"  redis-server CPU: {spent / messages * 1e6:.1f} µs per message")
    rows = sorted(commands.items(), key=lambda kv: -int(kv[1]["usec"]))
    for name, row in rows[:16]:
        per = int(row["usec"]) / messages
        print(f"  {name.removeprefix('cmdstat_'):<18} {per:6.2f} µs/msg  {row['calls']:>9} calls")


async def e2e(processes: int, messages: int, fsync: str, stats: bool = False) -> float:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        with RedisServer(root / "redis", "--appendonly", "yes", "--appendfsync", fsync) as srv:
            config = _config(srv.url)
            names = "abcdefgh"[:processes]
            instances = [await Instance(root, config, n).start() for n in names]
            try:
                async with aiohttp.ClientSession(headers=HEADERS) as http:
                    bases = [i.base for i in instances]
                    started = time.perf_counter()
                    await _post(http, bases, messages)
                    posted = time.perf_counter()
                    while await _undone(http, bases[0]):
                        await asyncio.sleep(0.02)
                    done = time.perf_counter()
                    if stats:
                        await _server_stats(srv.url, messages)
                        for instance in instances:
                            assert instance.process is not None
                            spent = _cpu_seconds(instance.process.pid) / messages * 1e6
                            name = instance.directory.name
                            print(f"  dispatcher {name} CPU: {spent:.1f} µs per message")
            finally:
                for instance in instances:
                    await instance.stop()
    rate = messages / (done - started)
    print(
        f"e2e redis processes={processes} fsync={fsync} messages={messages}: "
        f"ingest {messages / (posted - started):,.0f}/s, end to end {rate:,.0f} messages/s "
        f"({done - started:.2f} s)"
    )
    return rate


async def _timed(http: aiohttp.ClientSession, url: str, n: int = 20) -> str:
    took = []
    for _ in range(n):
        started = time.perf_counter()
        async with http.get(url) as r:
            await r.read()
            assert r.status == 200, (url, r.status)
        took.append(time.perf_counter() - started)
    took.sort()
    return f"median {statistics.median(took) * 1e3:.1f} ms, max {took[-1] * 1e3:.1f} ms"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def backlog(messages: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        with RedisServer(root / "redis", "--appendonly", "yes", "--appendfsync", "everysec") as srv:
            instance = await Instance(root, _config(srv.url), "a").start()
            try:
                async with aiohttp.ClientSession(headers=HEADERS) as http:
                    base = instance.base
                    async with http.patch(f"{base}/v1/pools/bench", json={"paused": True}):
                        pass
                    started = time.perf_counter()
                    await _post(http, [base], messages)
                    took = time.perf_counter() - started
                    print(f"backlog redis: {messages:,} queued in {took:.1f} s")
                    async with http.post(
                        f"{base}/v1/messages", json={"tag": "x", "payload": 1}
                    ) as r:
                        one = (await r.json())["id"]
                    assert instance.process is not None
                    print(f"  status look-up: {await _timed(http, f'{base}/v1/messages/{one}')}")
                    print(f"  DLQ page:       {await _timed(http, f'{base}/v1/dlq?limit=50')}")
                    print(f"  /metrics:       {await _timed(http, f'{base}/metrics')}")
                    print(f"  pools:          {await _timed(http, f'{base}/v1/pools')}")
                    print(f"  dispatcher RSS: {_rss(instance.process.pid):.0f} MB")
            finally:
                await instance.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["e2e", "backlog"])
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--fsync", default="everysec", choices=["everysec", "always"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--stats", action="store_true", help="print the server's cost")
    args = parser.parse_args()
    if args.kind == "e2e":
        rates = [
            asyncio.run(e2e(args.processes, args.messages or 100_000, args.fsync, args.stats))
            for _ in range(args.rounds)
        ]
        if len(rates) > 1:
            print(f"median end to end: {statistics.median(rates):,.0f} messages/s")
    else:
        asyncio.run(backlog(args.messages or 1_000_000))


if __name__ == "__main__":
    main()
