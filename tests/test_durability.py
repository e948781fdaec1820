"""Durability of the real program: `python -m dispatcher serve` as a subprocess on SQLite.

- crash: SIGKILL under concurrent load, restart on the same file: no acknowledged message is
  lost, and a message is delivered twice only if it was in flight at the crash;
- drain: SIGTERM (and SIGINT) finish the running attempts, answer 503 to ingest and /readyz
  meanwhile, leave the rest on disk and exit 0 well within server.grace_period.

Webhooks go to a loopback receiver in the test process, which records the `webhook-id` of
every request it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from .factories import webhook_config
from .kit.receiver import Receiver, receiver

pytestmark = [pytest.mark.allow_blocking, pytest.mark.slow]

TOKEN = "test-token"
SCOPES = ("produce", "read", "operate", "admin")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POOL = "hook"
BANNER = re.compile(r"dispatcher listening on (http://127\.0\.0\.1:(\d+))")
START_TIMEOUT = 15.0


# --- the program as a subprocess ----------------------------------------------------------


@dataclass
class Server:
    proc: asyncio.subprocess.Process
    base: str
    log: Path

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    def stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def write_config(
    tmp_path: Path, receiver_url: str, *, concurrency: int, grace: float, **pool: Any
) -> Path:
    config = webhook_config(
        receiver_url,
        {
            POOL: {
                "concurrency": concurrency,
                "timeout": 10,
                "retry": {"max_attempts": 5, "initial_backoff": 0.1, "max_backoff": 0.5},
                **pool,
            }
        },
        [{"match": "dur.>", "pools": [POOL]}],
        server={"grace_period": grace},
        store={"url": f"sqlite:///{tmp_path / 'd.db'}", "min_free_bytes": 0},
        auth={"tokens": [{"name": "t", "token": TOKEN, "scopes": list(SCOPES)}]},
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@asynccontextmanager
async def serve(config: Path, log: Path) -> AsyncIterator[Server]:
    """Start `python -m dispatcher serve` on a free port; SIGKILL it on the way out if it
    still runs. stderr (the log) goes to a file, shown when something fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dispatcher",
            "serve",
            "--config",
            str(config),
            "--port",
            "0",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=config.parent,
            env=env,
        )
    server: Server | None = None
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(START_TIMEOUT):
            while server is None:
                line = (await proc.stdout.readline()).decode(errors="replace")
                if not line:
                    rc = await proc.wait()
                    pytest.fail(f"the server exited ({rc}) before its banner:\n{log.read_text()}")
                if match := BANNER.search(line):
                    server = Server(proc, match.group(1), log)
        yield server
    finally:
        if proc.returncode is None:
            proc.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await proc.wait()


async def post(session: aiohttp.ClientSession, base: str, msg_id: str, n: int) -> int:
    body = {"tag": f"dur.m.{n % 7}", "payload": {"n": n, "id": msg_id}, "id": msg_id}
    async with session.post(f"{base}/v1/messages", json=body, headers=AUTH) as r:
        await r.read()
        return r.status


async def message(session: aiohttp.ClientSession, base: str, msg_id: str) -> dict[str, Any]:
    async with session.get(f"{base}/v1/messages/{msg_id}", headers=AUTH) as r:
        assert r.status == 200, (msg_id, r.status, await r.text())
        data: dict[str, Any] = await r.json()
        return data


def job_states(tmp_path: Path) -> Counter[str]:
    """Jobs per state in the SQLite file, read after the server exited (schema v1, as
    documented in dispatcher/stores/sqlite/__init__.py)."""
    names = {0: "ready", 1: "claimed", 2: "delivered", 3: "dead", 4: "scheduled"}
    db = sqlite3.connect(f"file:{tmp_path / 'd.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
    finally:
        db.close()
    return Counter({names[state]: n for state, n in rows})


def ids_of(requests: list[Any]) -> list[str]:
    return [r.headers["webhook-id"] for r in requests]


async def until(check: Any, timeout: float, what: str, *, fail: bool = True) -> bool:
    """Poll `check` every 20 ms for up to `timeout` seconds; fail the test (or, with
    fail=False, answer False) when it never holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            if fail:
                pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
            return False
        await asyncio.sleep(0.02)
    return True


# --- 1. crash -----------------------------------------------------------------------------

PRODUCERS = 8
PER_PRODUCER = 1000  # an upper bound; the kill comes long before
KILL_AFTER_ACKED = 400
KILL_AFTER_DELIVERED = 60


async def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    async with receiver() as rec, aiohttp.ClientSession() as session:
        rec.delay = 0.02  # deliveries take a while, so some are always in flight
        config = write_config(tmp_path, rec.url, concurrency=8, grace=10)
        acked: set[str] = set()
        finished = 0

        async with serve(config, tmp_path / "run1.log") as first:

            async def produce(p: int) -> None:
                nonlocal finished
                for i in range(PER_PRODUCER):
                    msg_id = f"crash-{p}-{i}"
                    try:
                        status = await post(session, first.base, msg_id, i)
                    except (aiohttp.ClientError, OSError):
                        return  # the server is gone
                    if 200 <= status < 300:
                        acked.add(msg_id)
                    elif first.proc.returncode is not None:
                        return
                    else:
                        pytest.fail(f"{msg_id}: unexpected {status}")
                finished += 1

            producers = [asyncio.create_task(produce(p)) for p in range(PRODUCERS)]
            try:
                await until(
                    lambda: (
                        len(acked) >= KILL_AFTER_ACKED
                        and len(rec.requests) >= KILL_AFTER_DELIVERED
                        and rec.in_flight > 0
                    ),
                    15,
                    "load with deliveries in flight",
                )
                first.proc.kill()
                in_flight_at_kill = rec.in_flight
                assert await first.wait(10) == -signal.SIGKILL
                async with asyncio.timeout(10):
                    await asyncio.gather(*producers)
            finally:
                for task in producers:
                    task.cancel()
                await asyncio.gather(*producers, return_exceptions=True)
        assert finished == 0, "the load ended before the kill; raise PER_PRODUCER"
        assert in_flight_at_kill > 0

        # Let the receiver finish recording whatever reached it before the kill.
        await asyncio.sleep(0.3)
        before = Counter(ids_of(rec.requests))
        cut = len(rec.requests)

        async with serve(config, tmp_path / "run2.log") as second:
            everything = await until(
                lambda: acked <= set(ids_of(rec.requests)), 25, "deliveries", fail=False
            )
            after = Counter(ids_of(rec.requests[cut:]))
            lost = acked - set(before) - set(after)
            assert everything, (
                f"{len(lost)} of {len(acked)} acknowledged messages never delivered,"
                f" e.g. {sorted(lost)[:5]}\n{second.stderr()}"
            )
            # The restarted server shows them delivered too (a sample, and every duplicate).
            duplicates = sorted(i for i in after if i in before)
            sample = random.Random(7).sample(sorted(acked), 20) + duplicates[:10]
            for msg_id in sample:
                await _wait_delivered(session, second.base, msg_id)
            second.signal(signal.SIGTERM)
            assert await second.wait(15) == 0, second.stderr()

    # No retries happened (the receiver always answers 200), so within one run every message
    # is delivered at most once; a second delivery comes only after the restart, for a
    # message whose first delivery had started before the kill (in flight, or not yet acked).
    assert max(before.values()) == 1, [i for i, n in before.items() if n > 1][:5]
    assert max(after.values()) == 1, [i for i, n in after.items() if n > 1][:5]
    print(
        f"acked={len(acked)} delivered_before_kill={len(before)} "
        f"in_flight_at_kill={in_flight_at_kill} redelivered_after_restart={len(duplicates)}"
    )


async def _wait_delivered(session: aiohttp.ClientSession, base: str, msg_id: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        view = await message(session, base, msg_id)
        job = view["pools"][POOL]
        if job["status"] == "delivered":
            assert job["attempts"], view
            assert job["attempts"][-1]["outcome"] == "success", view
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{msg_id} not shown delivered: {view}")
        await asyncio.sleep(0.05)


# --- 2 and 3. drain on SIGTERM / SIGINT ---------------------------------------------------


class FinishingReceiver(Receiver):
    """The receiver, also recording which requests it answered (by webhook-id), and when."""

    def __init__(self) -> None:
        super().__init__()
        self.done: dict[str, float] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = await super().handle(request)
        self.done[request.headers["webhook-id"]] = time.monotonic()
        return response


def finishing_receiver() -> AbstractAsyncContextManager[FinishingReceiver]:
    return receiver(FinishingReceiver)


CONCURRENCY = 4
SLOW = 1.5
GRACE = 10.0
MESSAGES = 12


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_drains_running_attempts_and_keeps_the_rest(
    tmp_path: Path, sig: signal.Signals
) -> None:
    async with finishing_receiver() as rec, aiohttp.ClientSession() as session:
        rec.delay = SLOW
        config = write_config(tmp_path, rec.url, concurrency=CONCURRENCY, grace=GRACE)
        ids = [f"drain-{i}" for i in range(MESSAGES)]
        acked: set[str] = set()

        async with serve(config, tmp_path / "run1.log") as first:
            for n, msg_id in enumerate(ids):
                assert await post(session, first.base, msg_id, n) == 202
                acked.add(msg_id)
            await until(lambda: rec.in_flight == CONCURRENCY, 10, "a full pool of attempts")
            running = set(ids_of(rec.requests))
            assert len(running) == CONCURRENCY

            signalled = time.monotonic()
            first.signal(sig)

            # The drain window (~SLOW seconds): ingest and readiness answer 503.
            probes = 0
            refused: aiohttp.ClientResponse | None = None
            while refused is None and time.monotonic() - signalled < SLOW:
                msg_id = f"probe-{probes}"
                probes += 1
                body = {"tag": "dur.probe", "payload": {}, "id": msg_id}
                async with session.post(f"{first.base}/v1/messages", json=body, headers=AUTH) as r:
                    detail = await r.text()
                    if r.status == 202:
                        acked.add(msg_id)  # sent before the signal was handled
                    else:
                        assert r.status == 503, (r.status, detail)
                        refused = r
                await asyncio.sleep(0.01)
            assert refused is not None, "POST /v1/messages never answered 503 while draining"
            assert refused.headers["Content-Type"].startswith("application/problem+json")
            assert int(refused.headers["Retry-After"]) >= 1
            async with session.get(f"{first.base}/readyz") as r:
                assert r.status == 503, await r.text()
                assert (await r.json())["reason"] == "draining"

            rc = await first.wait(GRACE + 5)
            exited = time.monotonic()
            assert rc == 0, first.stderr()

        # Exit came once the running attempts were done, not at the end of the grace period.
        assert exited - signalled < GRACE / 2, exited - signalled
        assert set(rec.done) == running, "the running attempts did not all finish"
        assert max(rec.done.values()) <= exited
        # Nothing new was started after the signal.
        assert set(ids_of(rec.requests)) == running
        # On disk: the drained attempts are recorded, the rest is queued.
        states = job_states(tmp_path)
        assert states["delivered"] == CONCURRENCY, states
        # Should be all "ready": see test_sigterm_right_after_ingest_leaves_nothing_claimed.
        assert states["ready"] + states["claimed"] == len(acked) - CONCURRENCY, states

        rec.delay = 0.0
        async with serve(config, tmp_path / "run2.log") as second:
            await until(
                lambda: acked <= set(ids_of(rec.requests)), 15, "the rest delivered after restart"
            )
            for msg_id in sorted(acked):
                await _wait_delivered(session, second.base, msg_id)
                view = await message(session, second.base, msg_id)
                # One attempt each: the drained ones were acked before the exit, the rest
                # were never attempted by the first run and were not lost.
                assert len(view["pools"][POOL]["attempts"]) == 1, view
            second.signal(sig)
            assert await second.wait(15) == 0, second.stderr()

        counts = Counter(ids_of(rec.requests))
        assert set(counts) == acked
        assert max(counts.values()) == 1, counts


async def test_grace_period_expiry_abandons_attempts_without_losing_them(tmp_path: Path) -> None:
    """Attempts that outlive server.grace_period are cut off; their messages go back to the
    store (not lost, redelivered after a restart) and the process still exits 0."""
    grace = 1.0
    async with receiver() as rec, aiohttp.ClientSession() as session:
        rec.delay = 5.0
        config = write_config(tmp_path, rec.url, concurrency=2, grace=grace)
        ids = [f"cut-{i}" for i in range(4)]
        async with serve(config, tmp_path / "run1.log") as first:
            for n, msg_id in enumerate(ids):
                assert await post(session, first.base, msg_id, n) == 202
            await until(lambda: rec.in_flight == 2, 10, "two attempts running")
            running = set(ids_of(rec.requests))
            signalled = time.monotonic()
            first.signal(signal.SIGTERM)
            assert await first.wait(grace + 8) == 0, first.stderr()
            elapsed = time.monotonic() - signalled
        assert grace * 0.8 <= elapsed < grace + 5, elapsed
        states = job_states(tmp_path)
        assert states["ready"] + states["claimed"] == len(ids), states  # none marked delivered

        rec.delay = 0.0
        cut = len(rec.requests)
        async with serve(config, tmp_path / "run2.log") as second:
            await until(lambda: set(ids) <= set(ids_of(rec.requests[cut:])), 15, "all delivered")
            for msg_id in ids:
                await _wait_delivered(session, second.base, msg_id)
            second.signal(signal.SIGTERM)
            assert await second.wait(15) == 0, second.stderr()
        after = Counter(ids_of(rec.requests[cut:]))
        # Every message once after the restart, the two cut-off ones included.
        assert after == Counter(ids), after
        assert len(running) == 2


async def test_sigterm_right_after_ingest_leaves_nothing_claimed(tmp_path: Path) -> None:
    """A clean drain hands every job it does not finish back to the store as queued, even
    when the signal comes while the pool is claiming the message just accepted. Up to four
    rounds on the same file (each start requeues what the last one left claimed); the race
    is lost in almost every round, so the first leftover ends the test."""
    async with receiver() as rec, aiohttp.ClientSession() as session:
        rec.delay = 0.3
        config = write_config(tmp_path, rec.url, concurrency=1, grace=10)
        for rnd in range(4):
            async with serve(config, tmp_path / f"run{rnd}.log") as srv:
                assert await post(session, srv.base, f"race-{rnd}-a", 0) == 202
                await until(lambda: rec.in_flight == 1, 10, "an attempt running")
                assert await post(session, srv.base, f"race-{rnd}-b", 1) == 202
                srv.signal(signal.SIGTERM)  # the pool is now claiming race-<rnd>-b
                assert await srv.wait(15) == 0, srv.stderr()
            states = job_states(tmp_path)
            assert states["claimed"] == 0, f"round {rnd}: left claimed after a clean exit: {states}"


async def test_sigterm_with_a_throttled_pool_exits_without_waiting_for_tokens(
    tmp_path: Path,
) -> None:
    """No attempt runs, only workers waiting for rate tokens: the drain has nothing to wait
    for, so the exit comes at once and every undelivered job is back to queued on disk."""
    grace = 5.0
    async with receiver() as rec, aiohttp.ClientSession() as session:
        config = write_config(tmp_path, rec.url, concurrency=2, grace=grace, rate=0.05, burst=1)
        async with serve(config, tmp_path / "run1.log") as first:
            for n in range(4):
                assert await post(session, first.base, f"slow-{n}", n) == 202
            await until(lambda: len(rec.requests) == 1, 10, "the first delivery")
            await asyncio.sleep(0.3)  # the workers take the next jobs and wait for tokens
            signalled = time.monotonic()
            first.signal(signal.SIGTERM)
            assert await first.wait(grace + 8) == 0, first.stderr()
            elapsed = time.monotonic() - signalled
        states = job_states(tmp_path)
        assert elapsed < grace / 2, f"took {elapsed:.1f}s to drain nothing; on disk: {states}"
        assert states == Counter(delivered=1, ready=3), states
