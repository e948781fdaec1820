"""Several `dispatcher serve` processes on one Redis, as users run them: real processes from
the CLI, a real webhook receiver on loopback, the machine's Redis (a key prefix per test) or
a private server the test stops and restarts."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from console.core import COOKIE

from .kit.console import csrf_of
from .kit.instance import HEADERS, TOKEN, Instance, instance_config
from .kit.receiver import Receiver, receiver
from .kit.redis import (
    URL,
    RedisCluster,
    RedisServer,
)

pytestmark = [pytest.mark.slow, pytest.mark.allow_blocking]


@pytest.fixture
async def rec() -> AsyncIterator[Receiver]:
    async with receiver() as r:
        yield r


async def started(tmp_path: Path, names: str, config: dict[str, Any]) -> list[Instance]:
    return list(await asyncio.gather(*(Instance(tmp_path, config, n).start() for n in names)))


async def post_all(
    http: aiohttp.ClientSession, bases: list[str], n: int, clients: int = 32
) -> tuple[list[str], Counter[int]]:
    """POST n single messages, alternating between `bases`; (accepted ids, statuses)."""
    ids: list[str] = []
    statuses: Counter[int] = Counter()
    numbers = iter(range(n))

    async def client() -> None:
        for i in numbers:
            url = f"{bases[i % len(bases)]}/v1/messages"
            async with http.post(url, json={"tag": "t.x", "payload": {"i": i}}) as resp:
                statuses[resp.status] += 1
                if resp.status == 202:
                    ids.append((await resp.json())["id"])

    await asyncio.gather(*(client() for _ in range(clients)))
    return ids, statuses


def delivered_ids(rec: Receiver) -> Counter[str]:
    return Counter(r.headers["webhook-id"] for r in rec.requests)


async def settle(check: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def test_two_processes_deliver_each_message_exactly_once(
    tmp_path: Path, prefix: str, rec: Receiver
) -> None:
    a, b = await started(tmp_path, "ab", instance_config(URL, prefix, f"{rec.url}/w"))
    try:
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            ids, statuses = await post_all(http, [a.base, b.base], 5000)
        assert statuses == {202: 5000}
        await settle(lambda: len(rec.requests) >= 5000, 60)
        await asyncio.sleep(0.5)  # a duplicate would arrive now
        assert delivered_ids(rec) == Counter(ids)  # every one, once
    finally:
        assert await a.stop() == 0
        assert await b.stop() == 0


async def test_a_killed_process_s_messages_are_delivered_by_the_survivor(
    tmp_path: Path, prefix: str
) -> None:
    class Slow(Receiver):
        """Holds every request 0.3 s, and remembers which instance sent it."""

        answered: list[tuple[str, float]]

        async def handle(self, request: web.Request) -> web.StreamResponse:
            answer = await super().handle(request)
            self.answered.append((request.headers["x-instance"], time.monotonic()))
            return answer

    def slow() -> Slow:
        r = Slow(delay=0.3)
        r.answered = []
        return r

    async with receiver(slow) as rec:
        configs = {
            name: instance_config(
                URL,
                prefix,
                f"{rec.url}/w",
                sink={"type": "webhook", "url": f"{rec.url}/w", "headers": {"x-instance": name}},
            )
            for name in "ab"
        }
        a = await Instance(tmp_path, configs["a"], "a").start()
        b = await Instance(tmp_path, configs["b"], "b").start()
        try:
            async with aiohttp.ClientSession(headers=HEADERS) as http:
                ids, statuses = await post_all(http, [a.base, b.base], 500)
            assert statuses == {202: 500}
            await settle(lambda: sum(r.headers["x-instance"] == "a" for r in rec.requests) > 20, 20)
            a_started = sum(r.headers["x-instance"] == "a" for r in rec.requests)
            await a.stop(signal.SIGKILL)
            killed_at = time.monotonic()
            a_answered = sum(1 for name, _ in rec.answered if name == "a")
            in_flight = a_started - a_answered  # attempts of `a` cut short by the kill
            # The survivor takes a's claims back after the lease (5 s).
            await settle(lambda: set(delivered_ids(rec)) >= set(ids), 5 + 30)
            assert time.monotonic() - killed_at < 5 + 30
            dups = sum(n - 1 for n in delivered_ids(rec).values())
            # At most what `a` had attempted without writing the outcome down: its attempts
            # in flight, and those answered in the moment before the kill (not yet acked).
            recent = sum(1 for name, at in rec.answered if name == "a" and at > killed_at - 0.5)
            assert dups <= in_flight + recent
        finally:
            await a.stop(signal.SIGKILL)
            assert await b.stop() == 0


async def test_a_rate_and_a_pause_set_through_one_instance_hold_for_both(
    tmp_path: Path, prefix: str, rec: Receiver
) -> None:
    a, b = await started(tmp_path, "ab", instance_config(URL, prefix, f"{rec.url}/w"))
    try:
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            async with http.patch(f"{a.base}/v1/pools/w", json={"rate": 20}) as resp:
                assert resp.status == 200
            await asyncio.sleep(1.0)  # b follows within a second
            await post_all(http, [a.base, b.base], 600)
            await settle(lambda: len(rec.requests) >= 40, 10)  # past the burst
            start, seen = time.monotonic(), len(rec.requests)
            await asyncio.sleep(10)
            rate = (len(rec.requests) - seen) / (time.monotonic() - start)
            assert 16 <= rate <= 24, rate  # 20/s for both together, within 20%

            async with http.patch(f"{b.base}/v1/pools/w", json={"paused": True}) as resp:
                assert resp.status == 200
            paused_at = time.monotonic()
            await asyncio.sleep(3.0)
            # No attempt of either process starts later than a second after the pause.
            assert [r.at - paused_at for r in rec.requests if r.at > paused_at + 1.0] == []
            async with http.get(f"{a.base}/v1/pools/w") as resp:
                assert (await resp.json())["paused"] is True
    finally:
        assert await a.stop() == 0
        assert await b.stop() == 0


async def test_redis_down_means_503_then_every_acknowledged_message_is_delivered(
    tmp_path: Path, rec: Receiver
) -> None:
    srv = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    srv.start()
    (a,) = await started(tmp_path, "a", instance_config(srv.url, "t", f"{rec.url}/w"))
    acknowledged: list[str] = []
    try:
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            ids, statuses = await post_all(http, [a.base], 200)
            assert statuses == {202: 200}
            acknowledged += ids
            srv.kill()
            for i in range(20):
                async with http.post(
                    f"{a.base}/v1/messages", json={"tag": "t.x", "payload": {"down": i}}
                ) as resp:
                    assert resp.status == 503, resp.status  # never a 2xx it cannot keep
                    assert "Retry-After" in resp.headers
            async with http.get(f"{a.base}/readyz") as resp:
                assert resp.status == 503
            await asyncio.sleep(2)  # down a few seconds; the process stays up
            srv.start()  # the same AOF
            async with asyncio.timeout(20):
                while True:
                    async with http.get(f"{a.base}/readyz") as resp:
                        if resp.status == 200:
                            break
                    await asyncio.sleep(0.2)
            ids, statuses = await post_all(http, [a.base], 100)
            assert statuses == {202: 100}
            acknowledged += ids
        await settle(lambda: set(delivered_ids(rec)) >= set(acknowledged), 30)
    finally:
        assert await a.stop() == 0
        srv.kill()


async def test_a_console_session_made_on_one_instance_works_on_the_other(
    tmp_path: Path, prefix: str, rec: Receiver
) -> None:
    a, b = await started(tmp_path, "ab", instance_config(URL, prefix, f"{rec.url}/w"))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{a.base}/console/login",
                data={"token": TOKEN},
                headers={"Origin": a.base},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303
                cookie = {"Cookie": f"{COOKIE}={resp.cookies[COOKIE].value}"}
            async with http.get(f"{b.base}/console/", headers=cookie) as resp:
                assert resp.status == 200
                page = await resp.text()
            assert 'data-pool="w"' in page
            # The CSRF token travels with the session: an action through b is accepted.
            async with http.post(
                f"{b.base}/console/pools/w/pause",
                data={"csrf_token": csrf_of(page)},
                headers={**cookie, "Origin": b.base},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303
            await asyncio.sleep(1.0)  # a follows within a second
            async with http.get(f"{a.base}/v1/pools/w", headers=HEADERS) as resp:
                assert (await resp.json())["paused"] is True
            # A logout through b ends the session on a as well.
            async with http.post(
                f"{b.base}/console/logout",
                data={"csrf_token": csrf_of(page)},
                headers={**cookie, "Origin": b.base},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303
            async with http.get(
                f"{a.base}/console/", headers=cookie, allow_redirects=False
            ) as resp:
                assert resp.status in (302, 303)
                assert "/console/login" in resp.headers["Location"]
    finally:
        assert await a.stop() == 0
        assert await b.stop() == 0


async def test_two_processes_on_a_redis_cluster_deliver_each_message_once(
    tmp_path: Path, rec: Receiver
) -> None:
    with RedisCluster(tmp_path / "cluster") as cluster:
        config = instance_config(cluster.url, "t", f"{rec.url}/w")
        config["pools"]["v"] = {
            **config["pools"]["w"],
            "sink": {"type": "webhook", "url": f"{rec.url}/v"},
        }
        # Two pools: {t:w} and {t:v} hash to slots 8422 and 12487, on different masters.
        config["routes"] = [{"match": ">", "pools": ["w", "v"]}]
        a, b = await started(tmp_path, "ab", config)
        try:
            async with aiohttp.ClientSession(headers=HEADERS) as http:
                ids, statuses = await post_all(http, [a.base, b.base], 2000)
            assert statuses == {202: 2000}
            await settle(lambda: len(rec.requests) >= 4000, 60)
            await asyncio.sleep(0.5)
            for pool in ("w", "v"):
                got = Counter(r.headers["webhook-id"] for r in rec.on(pool))
                assert got == Counter(ids), pool
        finally:
            assert await a.stop() == 0
            assert await b.stop() == 0
