"""Console render times: `python tests/bench/bench_console.py [DLQ_ENTRIES] [POOLS]`.

Builds a SQLite store with 50 pools and 100,000 dead-lettered messages (spread over the
pools, five error fingerprints, one tag per pool), starts the real app on loopback, logs in
and times every console page over HTTP: median and worst of several requests, server
render included. Prints numbers; asserts nothing (the target is < 300 ms per page).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiohttp.test_utils import TestClient, TestServer

from dispatcher.app import create_app
from dispatcher.message import (
    Attempt,
    Completion,
    DeadReason,
    IdGenerator,
    Message,
    NewMessage,
    Outcome,
)
from dispatcher.stores.sqlite import SqliteStore

from ..factories import settings

ERRORS = [
    "HTTP 500: upstream exploded",
    "HTTP 429: slow down",
    "timeout after 10.0 s",
    "connect to 10.0.0.{n}:443 refused",
    "HTTP 400: field 'email' of order {n} is invalid",
]
RUNS = 7


async def fill(path: str, entries: int, pools: list[str]) -> None:
    store = SqliteStore(path, synchronous="normal")
    await store.open()
    new_id = IdGenerator()
    t = time.perf_counter()
    per_pool = entries // len(pools)
    for i, pool in enumerate(pools):
        now = time.time()
        msgs = [
            NewMessage(
                Message(
                    id=new_id(),
                    tag=f"orders.p{i}",
                    payload=b'{"order": %d, "items": [1, 2, 3], "note": "<b>hi</b>"}' % k,
                    created_at=now,
                ),
                (pool,),
            )
            for k in range(per_pool)
        ]
        for start in range(0, len(msgs), 1000):
            await store.enqueue(msgs[start : start + 1000])
        while True:
            claim = await store.claim(pool, 500, time.time())
            if not claim.jobs:
                break
            now = time.time()
            await store.complete(
                [
                    Completion(
                        job,
                        Attempt(1, now, 0.01, Outcome.FAILURE, ERRORS[k % 5].format(n=k % 250)),
                        dead=DeadReason.PERMANENT,
                    )
                    for k, job in enumerate(claim.jobs)
                ]
            )
    print(f"filled {per_pool * len(pools):,} DLQ entries in {time.perf_counter() - t:.1f} s")
    await store.close()


async def main() -> None:
    entries = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    n_pools = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    pools = [f"pool-{i:02d}" for i in range(n_pools)]
    with tempfile.TemporaryDirectory() as tmp:
        db = f"{tmp}/console.db"
        await fill(db, entries, pools)
        app = create_app(
            settings(
                store={"url": f"sqlite:///{db}", "min_free_bytes": 0},
                auth={"tokens": [{"name": "ops", "token": "t", "scopes": ["admin"]}]},
                pools={p: {"sink": {"type": "log"}} for p in pools},
                routes=[{"match": f"orders.p{i}", "pools": [p]} for i, p in enumerate(pools)],
            )
        )
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            await bench_pages(client, pools)
        finally:
            await client.close()


async def bench_pages(client: TestClient, pools: list[str]) -> None:  # type: ignore[type-arg]
    origin = str(client.make_url("/")).rstrip("/")
    await client.post("/console/login", data={"token": "t"}, headers={"Origin": origin})
    html = await (await client.get("/console/dlq?pool=pool-07")).text()
    some_id = re.search(r'data-id="([^"]+)"', html)
    next_page = re.search(r'href="(/console/dlq\?[^"]*cursor=[^"]+)"', html)
    assert some_id, "the DLQ page listed nothing"
    assert next_page, "the DLQ page has no next page"
    mid = some_id[1]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert csrf
    pages = [
        ("overview (50 pools)", "GET", "/console/"),
        ("live.json", "GET", "/console/live.json"),
        ("pool page", "GET", "/console/pools/pool-07"),
        ("DLQ, no filter", "GET", "/console/dlq"),
        ("DLQ by error, no filter", "GET", "/console/dlq?view=groups"),
        ("DLQ by error, tag filter", "GET", "/console/dlq?view=groups&tag=orders.p7"),
        ("DLQ, pool filter", "GET", "/console/dlq?pool=pool-07"),
        ("DLQ, tag filter", "GET", "/console/dlq?tag=orders.p7"),
        ("DLQ, error text filter", "GET", "/console/dlq?error=exploded"),
        ("count.json, tag filter", "GET", "/console/dlq/count.json?tag=orders.p7"),
        ("count.json, error filter", "GET", "/console/dlq/count.json?error=exploded"),
        ("DLQ, last hour", "GET", "/console/dlq?window=1h"),
        ("DLQ, next page", "GET", next_page[1].replace("&amp;", "&")),
        ("DLQ entry", "GET", f"/console/dlq/pool-07/{mid}"),
        ("message timeline", "GET", f"/console/messages/{mid}"),
        ("audit", "GET", "/console/audit"),
        ("dry-run count, all", "POST", "/console/dlq/preview"),
    ]
    print(f"{'page':<28} {'median':>9} {'worst':>9}  (ms, {RUNS} requests each)")
    for label, method, path in pages:
        times = []
        for _ in range(RUNS):
            t = time.perf_counter()
            if method == "GET":
                response = await client.get(path)
            else:
                data = {"csrf_token": csrf[1], "op": "replay", "scope": "filter"}
                response = await client.post(path, data=data, headers={"Origin": origin})
            await response.read()
            times.append(1000 * (time.perf_counter() - t))
            assert response.status == 200, (path, response.status)
        print(f"{label:<28} {statistics.median(times):>9.1f} {max(times):>9.1f}")


if __name__ == "__main__":
    asyncio.run(main())
