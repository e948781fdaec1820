"""A failure inside the engine never stalls a live process, and odd input never becomes a
5xx. Each test reproduces a bug found in review, against real components (a real SQLite file,
the real Dispatcher, pools and acker, the aiohttp app)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dispatcher import Dispatcher, Publish
from dispatcher.acker import Acker
from dispatcher.app import create_app
from dispatcher.config import settings_from_dict
from dispatcher.errors import PartlyDone, StoreError
from dispatcher.message import (
    Attempt,
    Completion,
    DlqFilter,
    Job,
    Outcome,
    State,
)
from dispatcher.sinks.base import Sink
from dispatcher.stores.base import Claim
from dispatcher.stores.memory import MemoryStore
from dispatcher.stores.sqlite import SqliteStore
from dispatcher.stores.sqlite import store as sqlite_store
from dispatcher.stores.sqlite import writes as sqlite_writes

from . import factories
from .kit.api import ADMIN, READ, api_settings
from .kit.run import eventually


def _settings(tmp_path: Path, **pool: Any) -> Any:
    return factories.settings(
        store={"url": f"sqlite:///{tmp_path}/d.db", "min_free_bytes": 0},
        pools={"p": {"sink": {"type": "log"}, **pool}},
        routes=[{"match": "t", "pools": ["p"]}],
    )


class _Recorder(Sink):
    kind = "test"

    def __init__(self) -> None:
        self.got: list[tuple[str, int]] = []

    async def deliver(self, job: Job, attempt: int) -> None:
        self.got.append((job.message.id, attempt))
        if job.message.id == "bad" and attempt == 1:
            # An ordinary error text: a file name decoded with surrogateescape.
            raise OSError("cannot open " + b"/tmp/\xff".decode("utf-8", "surrogateescape"))


async def _state(d: Dispatcher, message_id: str) -> State | None:
    status = await d.get_message(message_id)
    return status.jobs[0].state if status else None


async def test_error_text_with_surrogate_does_not_kill_the_acker(tmp_path: Path) -> None:
    sink = _Recorder()
    d = Dispatcher(
        _settings(
            tmp_path, retry={"max_attempts": 3, "initial_backoff": 0.01, "max_backoff": 0.01}
        ),
        sinks={"p": sink},
    )
    await d.start()
    try:
        await d.publish([Publish(tag="t", payload=b"1", id="bad")])
        await eventually(lambda: ("bad", 1) in sink.got, timeout=5)
        await d.publish([Publish(tag="t", payload=b"2", id="good")])
        await eventually(lambda: ("good", 1) in sink.got, timeout=5)

        async def both_delivered() -> bool:
            return (await _state(d, "bad")) == State.DELIVERED and (
                await _state(d, "good")
            ) == State.DELIVERED

        await eventually(both_delivered, timeout=5)
    finally:
        await d.stop(grace=0.5)


class _ReleaseFailsOnce(SqliteStore):
    """A real SQLite store whose claims can be held at a gate, and whose next release fails
    as an I/O error would."""

    gate: asyncio.Event | None = None
    fail_release = 0

    async def claim(self, pool: str, limit: int, now: float) -> Claim:
        claim = await super().claim(pool, limit, now)
        if self.gate is not None:
            await self.gate.wait()
        return claim

    async def release(self, jobs: Any) -> None:
        if self.fail_release:
            self.fail_release -= 1
            raise StoreError("sqlite: disk I/O error")
        await super().release(jobs)


async def test_feeder_survives_a_failed_release_after_pause(tmp_path: Path) -> None:
    store = _ReleaseFailsOnce(f"{tmp_path}/d.db")
    sink = _Recorder()
    d = Dispatcher(_settings(tmp_path), store=store, sinks={"p": sink})
    await d.start()
    try:
        await asyncio.sleep(0.05)
        store.gate = asyncio.Event()
        await d.publish([Publish(tag="t", payload=b"1", id="m1")])
        await asyncio.sleep(0.05)  # the feeder's claim of m1 is committed, held at the gate
        store.fail_release = 1
        await d.update_pool("p", actor="test", paused=True)
        gate, store.gate = store.gate, None
        gate.set()
        await asyncio.sleep(0.1)
        await d.update_pool("p", actor="test", paused=False)
        await d.publish([Publish(tag="t", payload=b"2", id="m2")])
        # m2 needs only a live feeder; _IDLE_POLL (5 s) bounds a missed wake-up
        await eventually(lambda: ("m2", 1) in sink.got, timeout=7)
    finally:
        await d.stop(grace=0.5)


@pytest.mark.parametrize("path", ["/v1/dlq", "/v1/audit"])
async def test_unicode_digit_limit_is_a_400(aiohttp_client: Any, tmp_path: Path, path: str) -> None:
    client = await aiohttp_client(create_app(api_settings("sqlite", tmp_path)))
    response = await client.get(path, params={"limit": "\u00b2"}, headers=READ)
    assert response.status == 400


class _RefusesPoison(MemoryStore):
    """A store that cannot take one particular outcome (as a driver refusing odd data)."""

    async def complete(self, completions: Sequence[Completion]) -> None:
        if any(c.job.message.id == "poison" for c in completions):
            raise ValueError("cannot store this outcome")
        await super().complete(completions)


async def test_acker_isolates_an_outcome_the_store_refuses() -> None:
    store = _RefusesPoison()
    await store.open()
    now = time.time()
    await store.enqueue(
        [factories.new_message(i, tag="t", created=now) for i in ("poison", "fine")]
    )
    jobs = (await store.claim("p", 10, now)).jobs
    applied: list[Completion] = []
    acker = Acker(store, applied.extend)
    acker.start()
    try:
        for job in jobs:
            acker.add(factories.delivered(job, now))
        assert await acker.flush(timeout=5)
        assert [c.job.message.id for c in applied] == ["fine"]
        status = await store.get_message("fine")
        assert status is not None
        assert status.jobs[0].state == State.DELIVERED
        acker.add(Completion(jobs[1], Attempt(2, now, 0.01, Outcome.SUCCESS)))
        assert await acker.flush(timeout=5)  # still alive for later batches
    finally:
        await acker.stop()


class _SlowRelease(MemoryStore):
    """Holds every release at a gate, so a resume can overtake the pause's release."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def release(self, jobs: Sequence[Job]) -> None:
        await self.gate.wait()
        await super().release(jobs)


async def test_resume_that_overtakes_the_release_finds_the_released_jobs() -> None:
    store = _SlowRelease()
    seen: list[str] = []

    class Slow(Sink):
        async def deliver(self, job: Job, attempt: int) -> None:
            await asyncio.sleep(0.05)
            seen.append(job.message.id)

    settings = settings_from_dict(
        {
            "store": {"url": "memory://"},
            "pools": {"p": {"sink": {"type": "log"}, "concurrency": 2}},
            "routes": [{"match": "t", "pools": ["p"]}],
        },
        env={},
    )
    d = Dispatcher(settings, store=store, sinks={"p": Slow()})
    await d.start()
    try:
        await d.publish([Publish("t", b"{}") for _ in range(20)])
        await eventually(lambda: len(seen) >= 1)
        pausing = asyncio.create_task(d.update_pool("p", paused=True, actor="t"))
        await asyncio.sleep(0.01)  # the pause is now waiting on its release
        await d.update_pool("p", paused=False, actor="t")  # the resume's claim comes first
        store.gate.set()
        await pausing
        # The released jobs are ready again; the pool must pick them up without waiting
        # for its 5 s idle poll.
        await eventually(lambda: len(seen) >= 20, timeout=2.5)
    finally:
        store.gate.set()
        await d.stop(grace=1)


def _second_dlq_write_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real SQLite store's second DLQ write (replay or purge chunk) fails as an I/O
    error would."""
    writes = 0

    def second_fails(write: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            nonlocal writes
            writes += 1
            if writes == 2:
                raise sqlite3.OperationalError("disk I/O error")
            return write(*args)

        return wrapped

    monkeypatch.setattr(sqlite_writes, "replay", second_fails(sqlite_writes.replay))
    monkeypatch.setattr(sqlite_writes, "purge", second_fails(sqlite_writes.purge))


async def _dead_letters(tmp_path: Path, n: int, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(sqlite_store, "_CHUNK", 2)
    settings = _doomed_settings(f"sqlite:///{tmp_path}/d.db")
    _second_dlq_write_fails(monkeypatch)
    store = SqliteStore(f"{tmp_path}/d.db")
    d = Dispatcher(settings, store=store)
    await d.start()
    await d.publish([Publish(tag="t", payload=b"%d" % i) for i in range(n)])
    await eventually(lambda: _dead(d, n), timeout=5)
    await d.update_pool("p", actor="test", paused=True)  # replayed jobs stay queued
    return d


def _doomed_settings(url: str) -> Any:
    """One pool whose every message is dead-lettered at once; an admin token."""
    return factories.settings(
        store={"url": url, "min_free_bytes": 0},
        auth={"tokens": [{"name": "ops", "token": "admin-token", "scopes": ["admin"]}]},
        pools={"p": factories.doomed_pool()},
        routes=[{"match": "t", "pools": ["p"]}],
    )


async def _dead(d: Dispatcher, n: int) -> bool:
    return await d.dlq_count(DlqFilter()) == n


async def test_a_replay_that_fails_part_way_accounts_for_what_it_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = await _dead_letters(tmp_path, 5, monkeypatch)
    try:
        with pytest.raises(PartlyDone) as failed:
            await d.dlq_replay(DlqFilter(), actor="ops")
        assert failed.value.done == {"p": 2}
        assert await d.dlq_count(DlqFilter()) == 3
        # the backlog reservation matches the store: 2 queued again, none lost or doubled
        assert d._admission.outstanding["p"] == 2
        assert (await d.pool_info("p")).backlog == 2
        entries, _ = await d.audit_list(limit=10)
        replay = next(e for e in entries if e.action == "dlq.replay")
        assert replay.count == 2
        assert "disk I/O error" in str(replay.detail["error"])
    finally:
        await d.stop(grace=0.5)


async def test_a_failed_dlq_action_is_a_503_with_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any
) -> None:
    d = await _dead_letters(tmp_path, 5, monkeypatch)
    client = await aiohttp_client(create_app(d.settings, dispatcher=d))
    resp = await client.post("/v1/dlq/purge", json={"filter": {}}, headers=ADMIN)
    assert resp.status == 503, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert resp.headers["Retry-After"] == "5"
    assert await d.dlq_count(DlqFilter()) == 3  # the first chunk of two was purged


class _PurgeFails(MemoryStore):
    async def dlq_purge(self, selector: DlqFilter) -> dict[str, int]:
        raise StoreError("disk I/O error")


async def test_an_edited_replay_whose_purge_fails_still_answers_the_new_id() -> None:
    # The new message is committed before the old entry is purged: an error then would
    # invite a retry that sends the message a second time under another id.
    d = Dispatcher(_doomed_settings("memory://"), store=_PurgeFails())
    await d.start()
    try:
        [accepted] = await d.publish([Publish(tag="t", payload=b"old")])
        await eventually(lambda: _dead(d, 1), timeout=5)
        new_id = await d.dlq_replay_edited(accepted.id, "p", b"new", actor="ops")
        status = await d.get_message(new_id)
        assert status is not None
        assert status.message.payload == b"new"
        entries, _ = await d.audit_list(limit=1)
        assert entries[0].action == "dlq.edit_replay"
        assert entries[0].detail == {"new_id": new_id, "purge_error": "disk I/O error"}
    finally:
        await d.stop(grace=0.5)
