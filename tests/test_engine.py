"""The engine end to end: Dispatcher + a store + webhook sinks delivering to a real HTTP
receiver on loopback. Parametrised over the SQLite file store and the memory store."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatcher import Dispatcher, Publish
from dispatcher.errors import BacklogFull, Unroutable
from dispatcher.message import DlqFilter, State

from .factories import webhook_settings
from .kit.receiver import receiver
from .kit.run import eventually, running


@pytest.fixture(params=["sqlite", "memory"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"url": f"sqlite:///{tmp_path}/d.db"}
    return {"url": "memory://"}


def msg(tag: str, n: int = 0, **kw: Any) -> Publish:
    return Publish(tag=tag, payload=b'{"n": %d}' % n, **kw)


async def test_fan_out_and_wildcards_deliver_exact_counts(store_config: dict[str, Any]) -> None:
    async with receiver() as rec:
        settings = webhook_settings(
            rec.url,
            {"email": {}, "analytics": {}, "billing": {}},
            [
                {"match": "user.signup", "pools": ["email", "analytics"]},
                {"match": "orders.*", "pools": ["billing", "email"]},
                {"match": "clicks.>", "pools": ["analytics"]},
            ],
            store=store_config,
        )
        async with running(Dispatcher(settings)) as d:
            items = (
                [msg("user.signup", i) for i in range(10)]
                + [msg("orders.created", i) for i in range(7)]
                + [msg("clicks.web.home", i) for i in range(5)]
            )
            results = await d.publish(items)
            assert results[0].pools == ("email", "analytics")
            assert results[10].pools == ("billing", "email")
            with pytest.raises(Unroutable):
                await d.publish([msg("orders.created.eu")])
            await rec.wait_for(10 + 10 + 7 + 7 + 5)
            assert len(rec.on("email")) == 17
            assert len(rec.on("analytics")) == 15
            assert len(rec.on("billing")) == 7
            body_ids = {r.headers["webhook-id"] for r in rec.on("email")}
            assert len(body_ids) == 17


async def test_rate_limit_paces_deliveries(store_config: dict[str, Any]) -> None:
    async with receiver() as rec:
        settings = webhook_settings(
            rec.url,
            {"slow": {"rate": 20, "burst": 1, "concurrency": 8}},
            [{"match": "t", "pools": ["slow"]}],
            store=store_config,
        )
        async with running(Dispatcher(settings)) as d:
            await d.publish([msg("t", i) for i in range(200)])
            await rec.wait_for(200, timeout=20)
            times = [r.at for r in rec.requests]
            rate = (len(times) - 1) / (times[-1] - times[0])
            assert 16 <= rate <= 24, rate
            assert d.pools["slow"].rate_wait_seconds > 0


async def test_concurrency_limit_is_reached_and_never_exceeded(
    store_config: dict[str, Any],
) -> None:
    async with receiver() as rec:
        rec.delay = 0.1
        settings = webhook_settings(
            rec.url,
            {"p": {"concurrency": 4}},
            [{"match": "t", "pools": ["p"]}],
            store=store_config,
        )
        async with running(Dispatcher(settings)) as d:
            await d.publish([msg("t", i) for i in range(24)])
            await rec.wait_for(24)
            assert rec.max_in_flight == 4


async def test_pause_holds_deliveries_and_resume_drains(store_config: dict[str, Any]) -> None:
    async with receiver() as rec:
        settings = webhook_settings(
            rec.url, {"p": {}}, [{"match": "t", "pools": ["p"]}], store=store_config
        )
        async with running(Dispatcher(settings)) as d:
            info = await d.update_pool("p", paused=True, actor="test")
            assert info.paused
            await d.publish([msg("t", i) for i in range(30)])
            await eventually(lambda: _backlog(d, "p", 30))
            assert rec.requests == []
            info = await d.update_pool("p", paused=False, actor="test")
            assert not info.paused
            await rec.wait_for(30)
            audit, _ = await d.audit_list()
            assert [a.action for a in audit] == ["pool.update", "pool.update"]


async def _backlog(d: Dispatcher, pool: str, n: int) -> bool:
    return (await d.pool_info(pool)).backlog == n


def failing_then_ok(failures: int, status: int = 503) -> Callable[[str, int], int]:
    return lambda name, n: status if n <= failures else 200


async def test_retries_with_growing_gaps_then_success(store_config: dict[str, Any]) -> None:
    async with receiver() as rec:
        rec.script = failing_then_ok(3)
        settings = webhook_settings(
            rec.url,
            {"p": {"retry": {"max_attempts": 5, "initial_backoff": 0.2, "multiplier": 2}}},
            [{"match": "t", "pools": ["p"]}],
            store=store_config,
        )
        # random() = 0.999: the jittered backoff sits at its cap, so the gaps must grow.
        async with running(Dispatcher(settings, random=lambda: 0.999)) as d:
            (accepted,) = await d.publish([msg("t")])
            await rec.wait_for(4)
            status = await eventually(lambda: _delivered(d, accepted.id))
            gaps = [b.at - a.at for a, b in zip(rec.requests, rec.requests[1:], strict=False)]
            assert len(rec.requests) == 4
            # Backoffs of 0.2, 0.4 and 0.8 s (x 0.999): a retry is never early, and the
            # steps are wide enough that scheduling jitter on a busy machine cannot reorder
            # them (with 0.05 s steps it once did, by 55 ms).
            nominal = [0.2 * 0.999, 0.4 * 0.999, 0.8 * 0.999]
            assert all(gap >= want - 0.005 for gap, want in zip(gaps, nominal, strict=True)), gaps
            assert gaps[0] < gaps[1] < gaps[2], gaps
            attempts = status.jobs[0].attempts
            assert [a.n for a in attempts] == [1, 2, 3, 4]
            assert [a.outcome for a in attempts] == ["failure"] * 3 + ["success"]
            assert [r.headers["dispatcher-attempt"] for r in rec.requests] == ["1", "2", "3", "4"]
            assert len({r.headers["webhook-id"] for r in rec.requests}) == 1


async def _delivered(d: Dispatcher, message_id: str) -> Any:
    status = await d.get_message(message_id)
    if status and all(j.state == State.DELIVERED for j in status.jobs):
        return status
    return None


async def _dead(d: Dispatcher, message_id: str) -> Any:
    status = await d.get_message(message_id)
    if status and all(j.state == State.DEAD for j in status.jobs):
        return status
    return None


async def test_permanent_failure_dead_letters_after_one_attempt(
    store_config: dict[str, Any],
) -> None:
    async with receiver() as rec:
        rec.script = lambda name, n: 404
        settings = webhook_settings(
            rec.url, {"p": {}}, [{"match": "t", "pools": ["p"]}], store=store_config
        )
        async with running(Dispatcher(settings)) as d:
            (accepted,) = await d.publish([msg("t")])
            status = await eventually(lambda: _dead(d, accepted.id))
            assert len(rec.requests) == 1
            assert status.jobs[0].dead_reason == "permanent"
            entries, _ = await d.dlq_list(DlqFilter(pool="p"))
            assert [e.message.id for e in entries] == [accepted.id]
            assert "404" in (entries[0].error or "")


async def test_exhausted_attempts_land_in_dlq_then_replay_and_purge(
    store_config: dict[str, Any],
) -> None:
    async with receiver() as rec:
        failing = True
        rec.script = lambda name, n: 500 if failing else 200
        settings = webhook_settings(
            rec.url,
            {"p": {"retry": {"max_attempts": 3, "initial_backoff": 0.01}}},
            [{"match": "t", "pools": ["p"]}],
            store=store_config,
        )
        async with running(Dispatcher(settings)) as d:
            first, second = await d.publish([msg("t", 1), msg("t", 2)])
            await eventually(lambda: _dead(d, first.id))
            status = await eventually(lambda: _dead(d, second.id))
            job = status.jobs[0]
            assert job.dead_reason == "max_attempts"
            assert [a.error for a in job.attempts] == ["HTTP 500"] * 3
            assert await d.dlq_count(DlqFilter()) == 2
            assert await d.dlq_replay(DlqFilter(ids=(first.id,)), actor="t", dry_run=True) == 1
            assert len(rec.requests) == 6

            failing = False
            assert await d.dlq_replay(DlqFilter(ids=(first.id,)), actor="ops") == 1
            replayed = await eventually(lambda: _delivered(d, first.id))
            assert len(rec.on("p")) == 7  # exactly one more delivery
            assert [a.n for a in replayed.jobs[0].attempts] == [1]
            assert len(replayed.jobs[0].history) == 1  # the dead generation is kept
            assert len(replayed.jobs[0].history[0]) == 3

            assert await d.dlq_purge(DlqFilter(pool="p"), actor="ops") == 1
            assert await d.dlq_count(DlqFilter()) == 0
            assert await d.get_message(second.id) is None
            audit, _ = await d.audit_list()
            assert [(a.action, a.count) for a in audit] == [("dlq.purge", 1), ("dlq.replay", 1)]


async def test_hung_sink_is_abandoned_at_timeout_and_retried(
    store_config: dict[str, Any],
) -> None:
    async with receiver() as rec:
        rec.script = lambda name, n: "hang" if n == 1 else 200
        settings = webhook_settings(
            rec.url,
            {"p": {"timeout": 0.3, "concurrency": 1, "retry": {"initial_backoff": 0.01}}},
            [{"match": "t", "pools": ["p"]}],
            store=store_config,
        )
        now = [0.0]  # the pools' clock: the timeout passes when the test says so
        async with running(Dispatcher(settings, monotonic=lambda: now[0])) as d:
            started = time.monotonic()
            (accepted,) = await d.publish([msg("t")])
            await rec.wait_for(1)  # the first attempt is hanging
            now[0] += 0.3
            status = await eventually(lambda: _delivered(d, accepted.id))
            attempts = status.jobs[0].attempts
            assert [a.outcome for a in attempts] == ["timeout", "success"]
            assert 0.3 <= attempts[0].duration < 1.0  # abandoned at 0.3 s; it would hang an hour
            assert time.monotonic() - started < 3


async def test_backlog_limit_refuses_the_eleventh(store_config: dict[str, Any]) -> None:
    async with receiver() as rec:
        settings = webhook_settings(
            rec.url,
            {"p": {"max_backlog": 10}},
            [{"match": "t", "pools": ["p"]}],
            store=store_config,
        )
        async with running(Dispatcher(settings)) as d:
            await d.update_pool("p", paused=True, actor="t")
            for i in range(10):
                await d.publish([msg("t", i)])
            with pytest.raises(BacklogFull) as info:
                await d.publish([msg("t", 10)])
            assert info.value.retry_after
            await d.update_pool("p", paused=False, actor="t")
            await rec.wait_for(10)
            await eventually(lambda: d._admission.outstanding["p"] == 0)
            await d.publish([msg("t", 11)])


async def test_duplicate_ids_enqueue_nothing(store_config: dict[str, Any]) -> None:
    async with receiver() as rec:
        settings = webhook_settings(
            rec.url, {"p": {}}, [{"match": "t", "pools": ["p"]}], store=store_config
        )
        async with running(Dispatcher(settings)) as d:
            (a,) = await d.publish([msg("t", id="order-1")])
            (b,) = await d.publish([msg("t", id="order-1")])
            assert (a.duplicate, b.duplicate) == (False, True)
            await rec.wait_for(1)
            assert len(rec.requests) == 1


async def test_priority_and_delay(store_config: dict[str, Any]) -> None:
    async with receiver() as rec:
        settings = webhook_settings(
            rec.url,
            {"p": {"concurrency": 1}},
            [{"match": "t", "pools": ["p"]}],
            store=store_config,
        )
        async with running(Dispatcher(settings)) as d:
            await d.update_pool("p", paused=True, actor="t")
            await d.publish([msg("t", 1, priority=0), msg("t", 2, priority=5)])
            await d.publish([msg("t", 3, delay=0.5)])
            await d.update_pool("p", paused=False, actor="t")
            await rec.wait_for(3)
            assert [r.body for r in rec.requests] == [b'{"n": 2}', b'{"n": 1}', b'{"n": 3}']
            assert rec.requests[2].at - rec.requests[0].at >= 0.3


async def test_live_changes_persist_across_restart(tmp_path: Path) -> None:
    store = {"url": f"sqlite:///{tmp_path}/d.db"}
    async with receiver() as rec:
        settings = webhook_settings(
            rec.url,
            {"p": {"rate": 100, "concurrency": 4}},
            [{"match": "t", "pools": ["p"]}],
            store=store,
        )
        async with running(Dispatcher(settings)) as d:
            await d.update_pool("p", rate=5, burst=2, concurrency=2, paused=True, actor="t")
        async with running(Dispatcher(settings)) as d:
            info = await d.pool_info("p")
            assert (info.rate, info.burst, info.concurrency, info.paused) == (5, 2, 2, True)
            info = await d.reset_pool("p", actor="t")
            assert (info.rate, info.concurrency, info.paused) == (100, 4, False)


async def test_the_default_burst_follows_the_rate_in_force() -> None:
    settings = webhook_settings("http://127.0.0.1:9", {"p": {"rate": 10}}, [])
    async with running(Dispatcher(settings)) as d:
        assert (await d.pool_info("p")).burst == 10  # one second's worth of the rate
        info = await d.update_pool("p", rate=100, actor="t")
        assert (info.rate, info.burst) == (100, 100)
        info = await d.reset_pool("p", actor="t")
        assert (info.rate, info.burst) == (10, 10)


async def test_pause_hands_the_claimed_window_back_to_the_store(
    store_config: dict[str, Any],
) -> None:
    async with receiver() as rec:
        rec.delay = 0.2
        settings = webhook_settings(
            rec.url,
            {"p": {"concurrency": 2}},
            [{"match": "t", "pools": ["p"]}],
            store=store_config,
        )
        async with running(Dispatcher(settings)) as d:
            await d.publish([msg("t", i) for i in range(50)])
            await eventually(lambda: rec.in_flight == 2)
            await d.update_pool("p", paused=True, actor="t")

            async def settled() -> Any:
                counts = (await d.store.counts(time.time()))["p"]
                return counts if d.pools["p"].busy == 0 and counts.claimed == 0 else None

            # Without the release, a window of jobs would stay CLAIMED for as long as the
            # pool is paused; running attempts finish and their outcomes get written.
            counts = await eventually(settled, timeout=5)
            assert counts.ready == 50 - len(rec.requests)
