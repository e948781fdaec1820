"""HTTP ingest benchmark (issue 3). Prints numbers; asserts nothing.

    python -m tests.bench.bench_ingest [--seconds 5] [--concurrency 64] [--batches 50]

1. single: POST /v1/messages with 64 concurrent keep-alive clients (an aiohttp load
   generator in its own process) against the dispatcher (SQLite, synchronous=FULL, its
   pool paused so only ingest runs), then against a bare aiohttp handler that reads the
   body and answers 202, in the same run; requests per second of each, and the ratio.
2. batch: POST /v1/messages/batch with 1000-message batches (4 in flight); messages/s
   accepted and committed.

Each server runs in a process of its own, on loopback only; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

TOKEN = "bench-token"
MESSAGE = b'{"tag": "bench.click", "payload": {"user": 42, "event": "click", "path": "/home"}}'


def _settings(directory: str) -> Any:
    from dispatcher.config import settings_from_dict

    return settings_from_dict(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "store": {"url": f"sqlite:///{directory}/bench.db", "min_free_bytes": 0},
            "auth": {"tokens": [{"name": "bench", "token": TOKEN, "scopes": ["admin"]}]},
            "pools": {
                "bench": {
                    "max_backlog": 100_000_000,
                    "sink": {"type": "python", "handler": "tests.bench.handlers:noop"},
                }
            },
            "routes": [{"match": "bench.>", "pools": ["bench"]}],
        },
        env={},
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

        directory = tempfile.mkdtemp(prefix="bench-ingest-")
        app = create_app(_settings(directory))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    if kind == "dispatcher":
        from dispatcher.state import DISPATCHER

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


def _measure(kind: str, path: str, body: bytes, seconds: float, concurrency: int) -> float:
    proc, port = _server(kind)
    try:
        r = _run_load(f"http://127.0.0.1:{port}{path}", body, seconds, concurrency)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
    if r["errors"]:
        print(f"  ({kind}: {r['errors']} error answers)")
    return float(r["requests"]) / float(r["seconds"])


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
    args = parser.parse_args()
    bare = _measure("bare", "/v1/messages", MESSAGE, args.seconds, args.concurrency)
    ours = _measure("dispatcher", "/v1/messages", MESSAGE, args.seconds, args.concurrency)
    print(f"single ingest, {args.concurrency} keep-alive clients, {args.seconds:g} s each:")
    print(f"  bare aiohttp 202 handler: {bare:10,.0f} req/s")
    print(f"  dispatcher (SQLite FULL): {ours:10,.0f} req/s  ({ours / bare:.0%} of bare)")
    batch = b"[" + b",".join([MESSAGE] * 1000) + b"]"
    rate = _measure("dispatcher", "/v1/messages/batch", batch, args.seconds, 4)
    print(f"batch ingest, 1000-message batches, 4 in flight: {rate * 1000:10,.0f} messages/s")


if __name__ == "__main__":
    main()
