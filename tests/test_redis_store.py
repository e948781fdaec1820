"""What only the Redis store promises (the Store contract itself runs in
test_store_contract.py): processes sharing one server never hand out a job twice, a dead
process's claims come back after the lease, the persistence settings decide `durable`, and a
server that goes away and comes back is an error in between, never a lost message."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from dispatcher import following
from dispatcher.dispatcher import Dispatcher
from dispatcher.errors import BacklogFull, StoreError
from dispatcher.message import Publish
from dispatcher.stores.redis import RedisStore

from .factories import T0, delivered, new_message, settings
from .kit.redis import (
    URL,
    RedisServer,
)

LATER = T0 + 1_000_000


async def opened(
    url: str, prefix: str, consumer: str, lease: float = 30.0, renew: bool = True
) -> RedisStore:
    store = RedisStore(url, prefix=prefix, consumer=consumer, lease=lease, renew=renew)
    await store.open()
    return store


async def test_two_processes_never_claim_the_same_job(prefix: str) -> None:
    a = await opened(URL, prefix, "a")
    b = await opened(URL, prefix, "b")
    try:
        await a.enqueue([new_message(f"m{i}", created=T0 + i) for i in range(0, 2000, 2)])
        await b.enqueue([new_message(f"m{i}", created=T0 + i) for i in range(1, 2000, 2)])

        async def drain(store: RedisStore) -> list[str]:
            got: list[str] = []
            while jobs := (await store.claim("p", 37, LATER)).jobs:
                got += [j.message.id for j in jobs]
                await store.complete([delivered(j, T0) for j in jobs])
            return got

        from_a, from_b = await asyncio.gather(drain(a), drain(b))
        assert sorted(from_a + from_b) == sorted(f"m{i}" for i in range(2000))
        assert from_a  # both took part
        assert from_b
        assert await a.counts(LATER) == {}
    finally:
        await a.close()
        await b.close()


async def test_a_dead_process_s_claims_come_back_after_the_lease(prefix: str) -> None:
    dying = await opened(URL, prefix, "dying", lease=0.5)
    survivor = await opened(URL, prefix, "survivor", lease=0.5)
    try:
        await dying.enqueue([new_message(f"m{i}", created=T0 + i) for i in range(5)])
        assert len((await dying.claim("p", 5, LATER)).jobs) == 5
        await dying.close()  # dies holding all five: nothing released
        assert (await survivor.claim("p", 5, LATER)).jobs == []
        await asyncio.sleep(0.7)
        jobs = (await survivor.claim("p", 5, LATER)).jobs
        assert [j.message.id for j in jobs] == [f"m{i}" for i in range(5)]
        assert all(j.attempts == 0 for j in jobs)
    finally:
        await survivor.close()


async def test_a_live_process_keeps_its_claims_past_the_lease(prefix: str) -> None:
    holder = await opened(URL, prefix, "holder", lease=0.3)
    other = await opened(URL, prefix, "other", lease=0.3)
    try:
        await holder.enqueue([new_message("m")])
        (job,) = (await holder.claim("p", 1, LATER)).jobs
        await asyncio.sleep(1.0)  # three leases long: renewed, never taken over
        assert (await other.claim("p", 1, LATER)).jobs == []
        await holder.complete([delivered(job, T0)])
        status = await other.get_message("m")
        assert status is not None
        assert len(status.jobs[0].attempts) == 1
    finally:
        await holder.close()
        await other.close()


async def test_a_stale_completion_from_a_reclaimed_job_changes_nothing(prefix: str) -> None:
    slow = await opened(URL, prefix, "slow", lease=0.3, renew=False)  # stalled: no renewals
    other = await opened(URL, prefix, "other", lease=30)
    try:
        await slow.enqueue([new_message("m")])
        (stale,) = (await slow.claim("p", 1, LATER)).jobs
        await asyncio.sleep(0.5)
        (job,) = (await other.claim("p", 1, LATER)).jobs  # the lease ran out: taken over
        await slow.complete([delivered(stale, T0)])  # too late: the claim is not its own
        status = await other.get_message("m")
        assert status is not None
        assert status.jobs[0].attempts == []
        await other.complete([delivered(job, T0)])
        status = await other.get_message("m")
        assert status is not None
        assert len(status.jobs[0].attempts) == 1
    finally:
        await slow.close()
        await other.close()


async def test_durable_only_with_appendfsync_always(
    tmp_path: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "dispatcher.store.redis")
    with RedisServer(tmp_path / "always", "--appendonly", "yes", "--appendfsync", "always") as srv:
        store = await opened(srv.url, prefix, "x")
        assert store.durable
        await store.close()
    assert not caplog.records
    with RedisServer(tmp_path / "everysec", "--appendonly", "yes") as srv:
        store = await opened(srv.url, prefix, "x")
        assert not store.durable
        await store.close()
    assert "appendfsync is 'everysec'" in caplog.text
    store = await opened(URL, prefix, "x")  # the machine's: no AOF
    assert not store.durable
    await store.close()


async def test_a_server_that_goes_away_is_an_error_until_it_is_back(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path / "r", "--appendonly", "yes", "--appendfsync", "always").start()
    try:
        store = await opened(srv.url, "t", "x")
        assert await store.enqueue([new_message("before")]) == [True]
        srv.kill()
        assert not await store.ping()
        with pytest.raises(StoreError):
            await store.enqueue([new_message("during")])
        with pytest.raises(StoreError):
            await store.claim("p", 10, LATER)
        srv.start()  # same port, same AOF: what was acknowledged is there
        assert await store.ping()
        assert await store.enqueue([new_message("after")]) == [True]
        jobs = (await store.claim("p", 10, LATER)).jobs
        assert sorted(j.message.id for j in jobs) == ["after", "before"]
        await store.close()
    finally:
        srv.kill()


async def test_the_rate_holds_for_the_claims_of_every_process(prefix: str) -> None:
    a = await opened(URL, prefix, "a")
    b = await opened(URL, prefix, "b")
    try:
        for store in (a, b):
            store.share_rate("p", 2.0, 3)  # 2/s for the pool, whichever process claims
        await a.enqueue([new_message(f"m{i}", created=T0 + i) for i in range(50)])
        first = await a.claim("p", 50, LATER)
        second = await b.claim("p", 50, LATER)
        # One bucket: the burst of 3 (and what a few ms refill) for both together.
        assert len(first.jobs) + len(second.jobs) == 3
        assert second.next_at is not None
        assert LATER < second.next_at <= LATER + 0.5  # a token in 1/2 s at the most
        await asyncio.sleep(0.6)
        assert len((await b.claim("p", 50, LATER)).jobs) in (1, 2)  # 1.2 tokens, or a slow box
    finally:
        await a.close()
        await b.close()


async def test_max_backlog_counts_what_every_process_enqueued(prefix: str) -> None:
    raw = settings(
        store={"url": URL, "prefix": prefix, "min_free_bytes": 0},
        pools={"p": {"max_backlog": 10, "sink": {"type": "log"}}},
        routes=[{"match": ">", "pools": ["p"]}],
    )
    a, b = Dispatcher(raw), Dispatcher(raw)
    await a.start()
    await b.start()
    try:
        for d in (a, b):
            await d.update_pool("p", paused=True, actor="test")
        await a.publish([Publish("t", b"{}") for _ in range(6)])
        await asyncio.sleep(following.INTERVAL * 2.5)  # b's follower reads the backlog
        with pytest.raises(BacklogFull):
            await b.publish([Publish("t", b"{}") for _ in range(6)])
        assert len(await b.publish([Publish("t", b"{}") for _ in range(4)])) == 4
    finally:
        await a.stop()
        await b.stop()
