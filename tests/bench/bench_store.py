"""Store micro benchmark: `python tests/bench/bench_store.py [N]`. Prints, asserts nothing.

Per backend: enqueue N messages in batches of 1000, claim them in batches of 500, complete
them (delivered) in batches of 500; then the same with 8 concurrent producers and
consumers, which is where group commit earns its keep; then counts() over a big backlog.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dispatcher.message import Attempt, Completion, IdGenerator, Message, NewMessage, Outcome
from dispatcher.stores.base import Store
from dispatcher.stores.memory import MemoryStore
from dispatcher.stores.sqlite import SqliteStore

BATCH = 1000
CLAIM = 500
PAYLOAD = b'{"user": 1001, "event": "signup", "plan": "pro"}' * 4


def batches(n: int, new_id: IdGenerator) -> list[list[NewMessage]]:
    now = time.time()
    msgs = [
        NewMessage(Message(id=new_id(), tag="user.signup", payload=PAYLOAD, created_at=now), ("p",))
        for _ in range(n)
    ]
    return [msgs[i : i + BATCH] for i in range(0, n, BATCH)]


def rate(label: str, n: int, seconds: float) -> None:
    print(f"  {label:<34} {n / seconds:>10,.0f} msg/s  ({seconds:.2f} s)")


async def sequential(store: Store, n: int) -> None:
    todo = batches(n, IdGenerator())
    t = time.perf_counter()
    for b in todo:
        await store.enqueue(b)
    rate("enqueue (batches of 1000)", n, time.perf_counter() - t)

    t = time.perf_counter()
    claimed = []
    while True:
        c = await store.claim("p", CLAIM, time.time())
        if not c.jobs:
            break
        claimed.append(c.jobs)
    rate(f"claim (batches of {CLAIM})", n, time.perf_counter() - t)

    t = time.perf_counter()
    for jobs in claimed:
        now = time.time()
        await store.complete([Completion(j, Attempt(1, now, 0.001, Outcome.SUCCESS)) for j in jobs])
    rate(f"complete (batches of {CLAIM})", n, time.perf_counter() - t)


async def concurrent(store: Store, n: int, workers: int = 8) -> None:
    """Producers enqueue batches of 100 while consumers claim and complete batches of 100."""
    todo = batches(n, IdGenerator())
    small = [b[i : i + 100] for b in todo for i in range(0, len(b), 100)]
    done = 0

    async def produce(k: int) -> None:
        for b in small[k::workers]:
            await store.enqueue(b)

    async def consume() -> None:
        nonlocal done
        while done < n:
            c = await store.claim("p", 100, time.time())
            if not c.jobs:
                await asyncio.sleep(0.001)
                continue
            now = time.time()
            await store.complete(
                [Completion(j, Attempt(1, now, 0.001, Outcome.SUCCESS)) for j in c.jobs]
            )
            done += len(c.jobs)

    commits = getattr(store, "commits", 0)
    t = time.perf_counter()
    await asyncio.gather(*(produce(k) for k in range(workers)), *(consume() for _ in range(4)))
    rate(f"end to end, {workers} producers, 4 consumers", n, time.perf_counter() - t)
    if isinstance(store, SqliteStore):
        print(f"  {'commits':<34} {store.commits - commits:>10,}")


async def backlog(store: Store, n: int) -> None:
    for b in batches(n, IdGenerator()):
        await store.enqueue(b)
    t = time.perf_counter()
    counts = await store.counts(time.time())
    label = f"counts() with {n:,} queued"
    ms = 1000 * (time.perf_counter() - t)
    print(f"  {label:<34} {ms:>10.2f} ms  ready={counts['p'].ready}")
    t = time.perf_counter()
    c = await store.claim("p", CLAIM, time.time())
    print(
        f"  {'claim(500) from that backlog':<34} {1000 * (time.perf_counter() - t):>10.2f} ms"
        f"  got={len(c.jobs)}"
    )


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        stores: list[tuple[str, Store]] = [
            ("memory", MemoryStore()),
            ("sqlite (synchronous=full)", SqliteStore(f"{tmp}/full.db")),
            ("sqlite (synchronous=normal)", SqliteStore(f"{tmp}/normal.db", synchronous="normal")),
        ]
        for name, store in stores:
            print(name)
            await store.open()
            await sequential(store, n)
            await concurrent(store, n)
            await backlog(store, n * 5)
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
