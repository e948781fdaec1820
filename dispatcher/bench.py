"""`dispatcher bench`: what this machine sustains, measured in about 20 seconds on a
temporary SQLite store (synchronous FULL, as `serve` runs it), for sizing a deployment.

Four figures, through the real HTTP app on loopback:
- ingest, single messages: 64 keep-alive clients POST /v1/messages, each message with an
  id of its own (the usual advice for idempotency), the pool paused so only ingest runs;
- ingest, batches: POST /v1/messages/batch, 1,000 messages a batch, 4 in flight;
- latency: single messages offered at a steady rate; from the moment the dispatcher
  received one (its commit's wait included) to the moment its delivery started: p50,
  p99, p99.9. Before the end-to-end burst, not after it: in the seconds after, SQLite
  checkpoints the burst's writes and the outcomes of its last deliveries are written, and
  that (a p99 of 10 ms against 0.9 here) is the burst's aftermath, not a 1,000/s load's;
- end to end: batches in, delivered to a no-op sink (messages/s from the first POST to the
  last delivery, concurrency 64).

The load comes from a child process (`python -m dispatcher.bench`), as producers would, so
its work is not the server's; on a small machine it still shares the cores, and the
figures say so. Numbers only: nothing here passes or fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aiohttp import web

from .app import create_app
from .config import Settings, settings_from_dict
from .dispatcher import Dispatcher
from .http.api import SINGLES
from .message import Job, Publish
from .server import tune_gc, tune_process
from .sinks.base import Sink

TOKEN = "bench-" + os.urandom(8).hex()
PAYLOAD = b'{"user": 42, "event": "click", "path": "/home"}'
CLIENTS = 64
LATENCY_RATE = 1000.0  # messages/s offered in the latency test


class Probe(Sink):
    """A no-op sink that counts deliveries and notes when each watched one started."""

    kind = "probe"

    def __init__(self) -> None:
        self.delivered = 0
        self.target = 0
        self.last = 0.0
        self.done = asyncio.Event()
        self.started: dict[str, float] = {}

    async def deliver(self, job: Job, attempt: int) -> None:
        now = time.time()
        self.delivered += 1
        self.last = now
        if job.message.tag == "deliver.latency":
            self.started[job.message.id] = time.perf_counter()
        if self.delivered == self.target:
            self.done.set()

    def expect(self, n: int) -> None:
        self.delivered, self.target = 0, n
        self.done.clear()


def settings(directory: str) -> Settings:
    pool = {"concurrency": CLIENTS, "max_backlog": 100_000_000, "sink": {"type": "log"}}
    return settings_from_dict(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "store": {"url": f"sqlite:///{directory}/bench.db", "min_free_bytes": 0},
            "auth": {"tokens": [{"name": "bench", "token": TOKEN, "scopes": ["admin"]}]},
            "pools": {"ingest": pool, "delivery": pool},
            "routes": [
                {"match": "ingest.>", "pools": ["ingest"]},
                {"match": "deliver.>", "pools": ["delivery"]},
            ],
        }
    )


def run(seconds: float = 20.0, out: Any = None) -> dict[str, float]:
    """Run the self-test for about `seconds` and print what it found; returns the figures."""
    out = out or sys.stdout
    tune_process()  # as `dispatcher serve` does
    with tempfile.TemporaryDirectory(prefix="dispatcher-bench-") as directory:
        return asyncio.run(_run(directory, seconds, out))


async def _run(directory: str, seconds: float, out: Any) -> dict[str, float]:
    probe = Probe()
    config = settings(directory)
    dispatcher = Dispatcher(config, sinks={"delivery": probe})
    runner = web.AppRunner(create_app(config, dispatcher=dispatcher), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    tune_gc()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    share = seconds / 20.0
    print(
        f"dispatcher bench: about {seconds:g} s on a temporary SQLite store (synchronous "
        f"FULL), {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; the load "
        "generator runs on this machine too",
        file=out,
        flush=True,
    )
    figures: dict[str, float] = {}
    try:
        await dispatcher.update_pool("ingest", actor="bench", paused=True)
        single = await _load(url, "single", 5.0 * share)
        figures["ingest_single_per_s"] = single["requests"] / single["seconds"]
        _line(out, f"ingest, single messages ({CLIENTS} clients, an id each)", single, "req/s")
        batch = await _load(url, "batch", 4.0 * share)
        figures["ingest_batch_per_s"] = 1000 * batch["requests"] / batch["seconds"]
        _line(out, "ingest, batches of 1,000 (4 in flight)", batch, "messages/s", 1000)
        singles = runner.app[SINGLES]
        figures.update(await _latency(singles, probe, 4.0 * share, out))
        rate = figures["ingest_batch_per_s"]
        figures["end_to_end_per_s"] = await _end_to_end(url, probe, rate, 5.0 * share, out)
    finally:
        await runner.cleanup()
    return figures


def _line(out: Any, what: str, result: dict[str, Any], unit: str, per: int = 1) -> None:
    rate = per * result["requests"] / result["seconds"]
    errors = f" ({result['errors']} refused)" if result["errors"] else ""
    print(f"  {what + ':':52} {rate:>10,.0f} {unit}{errors}", file=out, flush=True)


async def _load(url: str, kind: str, seconds: float, total: int = 0) -> dict[str, Any]:
    """Run the load generator child for `seconds` (or `total` messages) and read its tally."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher.bench",
        kind,
        url,
        str(seconds),
        str(total),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "DISPATCHER_BENCH_TOKEN": TOKEN},
    )
    stdout, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the load generator failed (exit {child.returncode})")
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def _end_to_end(url: str, probe: Probe, ingest: float, seconds: float, out: Any) -> float:
    """As many batches as take about `seconds` to deliver, guessed from the batch ingest
    rate (`ingest`; delivery runs at about half of it), all delivered."""
    total = min(500_000, max(1000, int(seconds * ingest / 2) // 1000 * 1000))
    probe.expect(total)
    result = await _load(url, "deliver", seconds * 4, total)
    # What was delivered by the timeout counts, and the line says so.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(probe.done.wait(), timeout=max(60.0, seconds * 10))
    rate = probe.delivered / max(probe.last - float(result["started"]), 1e-9)
    shortfall = "" if probe.delivered == total else f" (only {probe.delivered:,} in time)"
    print(
        f"  {'end to end, batches in, delivered to a no-op sink:':52} "
        f"{rate:>10,.0f} messages/s{shortfall}",
        file=out,
        flush=True,
    )
    return rate


async def _latency(singles: Any, probe: Probe, seconds: float, out: Any) -> dict[str, float]:
    """Single messages at LATENCY_RATE through the ingest path (Singles): received (the
    commit's wait included) → sink start, in this process, so both ends read the same clock."""
    interval = 1.0 / LATENCY_RATE
    accepted: dict[str, float] = {}
    probe.started.clear()
    n = max(1, int(seconds * LATENCY_RATE))
    probe.expect(n)

    async def one() -> None:
        # From the request's arrival, not its answer: a pool that keeps up is handed the
        # job as it commits (Store.hand_off), so delivery may start before publish returns.
        sent = time.perf_counter()
        result = await singles.publish(Publish("deliver.latency", PAYLOAD))
        accepted[result.id] = sent

    await open_loop(one, n, interval)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(probe.done.wait(), timeout=10)
    waits = sorted(probe.started[i] - t for i, t in accepted.items() if i in probe.started) or [0.0]
    p50, p99, p999 = (_quantile(waits, q) * 1000 for q in (0.5, 0.99, 0.999))
    print(
        f"  {f'latency, received → delivery start, {LATENCY_RATE:,.0f}/s offered:':52} "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, p99.9 {p999:.2f} ms",
        file=out,
        flush=True,
    )
    return {"latency_p50_ms": p50, "latency_p99_ms": p99, "latency_p999_ms": p999}


async def open_loop(one: Callable[[], Coroutine[Any, Any, None]], n: int, interval: float) -> None:
    """Start `one()` n times, one every `interval` seconds whatever came of the last (an
    open loop, as independent producers offer load), and wait for all of them."""
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(n):
        delay = start + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=1000, method="inclusive")[int(q * 1000) - 1]


# --- the load generator (the child process) ----------------------------------------------


async def _generate(kind: str, url: str, seconds: float, total: int) -> dict[str, Any]:
    import aiohttp

    headers = {
        "Authorization": f"Bearer {os.environ['DISPATCHER_BENCH_TOKEN']}",
        "Content-Type": "application/json",
    }
    prefix = os.urandom(6).hex()
    item = b'{"tag": "%s", "payload": ' + PAYLOAD + b"}"
    single = item[1:] % b"ingest.click"  # after the id each message gets
    batch = b"[" + b",".join([item % b"ingest.click"] * 1000) + b"]"
    deliver = b"[" + b",".join([item % b"deliver.job"] * 1000) + b"]"
    counts = {"requests": 0, "errors": 0}
    sent = 0
    started = time.time()
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(path: str) -> None:
            nonlocal sent
            while time.perf_counter() < deadline:
                if kind == "single":
                    sent += 1
                    body = b'{"id": "%s-%d", ' % (prefix.encode(), sent) + single
                elif kind == "batch":
                    body = batch
                else:
                    if sent >= total:
                        return
                    sent += 1000
                    body = deliver
                async with session.post(url + path, data=body, headers=headers) as response:
                    await response.read()
                    counts["requests" if response.status in (200, 202) else "errors"] += 1

        if kind == "single":
            await asyncio.gather(*(client("/v1/messages") for _ in range(CLIENTS)))
        else:
            await asyncio.gather(*(client("/v1/messages/batch") for _ in range(4)))
    return {**counts, "seconds": time.time() - started, "started": started}


if __name__ == "__main__":
    kind, url, duration, messages = sys.argv[1:5]
    print(json.dumps(asyncio.run(_generate(kind, url, float(duration), int(messages)))))
