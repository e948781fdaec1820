"""HTTP ingest benchmark (issue 3). Prints numbers; asserts nothing.

    python -m tests.bench.bench_ingest [--seconds 5] [--concurrency 64] [--rounds 1]
                                       [--only single|batch]

1. single: POST /v1/messages with 64 concurrent keep-alive clients (an aiohttp load
   generator in its own process) against a bare aiohttp handler that reads the body and
   answers 202, then against the dispatcher (SQLite, synchronous=FULL, its pool paused so
   only ingest runs), in the same run; requests per second of each, and the ratio.
2. batch: POST /v1/messages/batch with 1000-message batches (4 in flight); messages/s
   accepted and committed.

Each server runs in a process of its own, on loopback only; every run is bounded in time.
With `--rounds N` the single test alternates bare and dispatcher N times (a noisy machine
drifts; alternating spreads the drift over both) and prints every round and the medians.
Next to each rate is the server process's CPU time per request (user + system, from
/proc, Linux only): on a small machine the load generator competes for the same cores, so
CPU per request says more about the server than requests per second alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

TOKEN = "bench-token"
MESSAGE = b'{"tag": "bench.click", "payload": {"user": 42, "event": "click", "path": "/home"}}'


def _settings(directory: str) -> Any:
    from ..factories import settings

    return settings(
        server={"host": "127.0.0.1", "port": 0},
        store={"url": f"sqlite:///{directory}/bench.db", "min_free_bytes": 0},
        auth={"tokens": [{"name": "bench", "token": TOKEN, "scopes": ["admin"]}]},
        pools={
            "bench": {
                "max_backlog": 100_000_000,
                "sink": {"type": "python", "handler": "tests.bench.handlers:noop"},
            }
        },
        routes=[{"match": "bench.>", "pools": ["bench"]}],
    )


async def _serve(kind: str) -> None:
    from aiohttp import web

    if kind == "bare":

        async def accept(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"status": "queued"}, status=202)

        app = web.Application()
        app.router.add_post("/v1/messages", accept)
        directory = None
    else:
        from dispatcher.app import create_app
        from dispatcher.server import tune_process

        tune_process()  # as `dispatcher serve` does before it builds the app
        directory = tempfile.mkdtemp(prefix="bench-ingest-")
        app = create_app(_settings(directory))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    if kind == "dispatcher":
        from dispatcher.server import tune_gc
        from dispatcher.state import DISPATCHER

        tune_gc()  # as `dispatcher serve` does once started

        await app[DISPATCHER].update_pool("bench", actor="bench", paused=True)
    print(runner.addresses[0][1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    await runner.cleanup()


async def _load(url: str, body: bytes, seconds: float, concurrency: int) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    done = 0
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status in (200, 202):
                        done += 1
                    else:
                        errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    print(json.dumps({"requests": done, "errors": errors, "seconds": elapsed}), flush=True)


def _server(kind: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.bench_ingest", "_serve", kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def _run_load(url: str, body: bytes, seconds: float, concurrency: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("wb", delete=False) as f:
        f.write(body)
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.bench.bench_ingest",
                "_load",
                url,
                f.name,
                str(seconds),
                str(concurrency),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    result: dict[str, Any] = json.loads(out)
    return result


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` (all its threads) so far; None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Result:
    def __init__(self, rate: float, cpu_per_request: float | None) -> None:
        self.rate = rate
        self.cpu_per_request = cpu_per_request

    def __str__(self) -> str:
        cpu = "" if self.cpu_per_request is None else f", {self.cpu_per_request * 1e6:5.0f} µs CPU"
        return f"{self.rate:10,.0f} req/s{cpu}"


def _measure(kind: str, path: str, body: bytes, seconds: float, concurrency: int) -> Result:
    proc, port = _server(kind)
    try:
        before = _cpu_seconds(proc.pid)
        r = _run_load(f"http://127.0.0.1:{port}{path}", body, seconds, concurrency)
        after = _cpu_seconds(proc.pid)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
    if r["errors"]:
        print(f"  ({kind}: {r['errors']} error answers)")
    requests = int(r["requests"])
    cpu = None
    if before is not None and after is not None and requests:
        cpu = (after - before) / requests
    return Result(requests / float(r["seconds"]), cpu)


def _median_cpu(results: list[Result]) -> float | None:
    cpus = [r.cpu_per_request for r in results if r.cpu_per_request is not None]
    return statistics.median(cpus) if cpus else None


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        asyncio.run(_serve(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        with open(sys.argv[3], "rb") as f:
            body = f.read()
        asyncio.run(_load(sys.argv[2], body, float(sys.argv[4]), int(sys.argv[5])))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", choices=("single", "batch"), help="run one of the two tests")
    args = parser.parse_args()
    if args.only != "batch":
        _single(args)
    if args.only != "single":
        _batch(args)


def _single(args: argparse.Namespace) -> None:
    bares: list[Result] = []
    ours: list[Result] = []
    print(f"single ingest, {args.concurrency} keep-alive clients, {args.seconds:g} s each:")
    for n in range(args.rounds):
        bare = _measure("bare", "/v1/messages", MESSAGE, args.seconds, args.concurrency)
        our = _measure("dispatcher", "/v1/messages", MESSAGE, args.seconds, args.concurrency)
        bares.append(bare)
        ours.append(our)
        if args.rounds > 1:
            print(f"  round {n + 1}: bare {bare}; dispatcher {our} ({our.rate / bare.rate:.0%})")
    bare = Result(statistics.median(r.rate for r in bares), _median_cpu(bares))
    our = Result(statistics.median(r.rate for r in ours), _median_cpu(ours))
    median = " (medians)" if args.rounds > 1 else ""
    print(f"  bare aiohttp 202 handler: {bare}{median}")
    print(f"  dispatcher (SQLite FULL): {our}  ({our.rate / bare.rate:.0%} of bare){median}")


def _batch(args: argparse.Namespace) -> None:
    batch = b"[" + b",".join([MESSAGE] * 1000) + b"]"
    results = []
    for n in range(args.rounds):
        result = _measure("dispatcher", "/v1/messages/batch", batch, args.seconds, 4)
        results.append(result)
        if args.rounds > 1:
            print(f"  round {n + 1}: {_batch_line(result)}")
    median = Result(statistics.median(r.rate for r in results), _median_cpu(results))
    label = " (medians)" if args.rounds > 1 else ""
    print(f"batch ingest, 1000-message batches, 4 in flight: {_batch_line(median)}{label}")


def _batch_line(result: Result) -> str:
    cpu = result.cpu_per_request
    per_message = "" if cpu is None else f" ({cpu * 1e3:.1f} µs server CPU per message)"
    return f"{result.rate * 1000:10,.0f} messages/s{per_message}"


if __name__ == "__main__":
    main()
