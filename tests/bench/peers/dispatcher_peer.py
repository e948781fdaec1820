"""The dispatcher as a user runs it: `dispatcher serve` with a config of one pool, durable
SQLite (synchronous FULL, the default: every 202 is fsynced) or the redis store (on the run's
private server, with `appendonly yes` and `appendfsync everysec` as the issue states),
observability on as shipped, concurrency 64, the no-op python sink counted by `tally`.
Producers post HTTP batches of 1,000 messages, 4 in flight."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import aiohttp
import msgspec

TOKEN = "peers-token"
_CONFIG = """\
server: {{host: 127.0.0.1, port: {port}}}
store: {{url: "{store}", prefix: peers, min_free_bytes: 0}}
auth: {{tokens: [{{name: bench, token: {token}, scopes: [produce, read]}}]}}
pools:
  bench:
    concurrency: 64
    max_backlog: 100000000
    sink: {{type: python, handler: "tests.bench.peers.tally:noop_async"}}
routes: [{{match: "bench.>", pools: [bench]}}]
"""


def workers(directory: str, port: int, redis_url: str | None = None) -> list[list[str]]:
    """One `dispatcher serve`: on SQLite in `directory`, or on Redis at `redis_url`."""
    store = redis_url or f"sqlite:///{directory}/dispatcher.db"
    config = os.path.join(directory, "dispatcher.yaml")
    with open(config, "w") as f:
        f.write(_CONFIG.format(store=store, port=port, token=TOKEN))
    return [[sys.executable, "-m", "dispatcher", "serve", "--config", config]]


async def produce(n: int, payload: Any) -> None:

    url = os.environ["PEERS_DISPATCHER_URL"] + "/v1/messages/batch"
    item = msgspec.json.encode({"tag": "bench.job", "payload": payload})
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    sizes = [min(1000, n - start) for start in range(0, n, 1000)]
    bodies = iter(b"[" + b",".join([item] * size) + b"]" for size in sizes)
    async with aiohttp.ClientSession() as session:

        async def post() -> None:
            for body in bodies:  # shared: the 4 senders take turns
                async with session.post(url, data=body, headers=headers) as response:
                    if response.status != 202:
                        raise RuntimeError(f"{response.status}: {await response.text()}")

        await asyncio.gather(*(post() for _ in range(4)))
