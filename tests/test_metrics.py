"""/metrics against what really happened: a scripted run through real loopback webhooks, and
every counter compared with what the receiver itself saw."""

from __future__ import annotations

import asyncio
import random
import shutil
from bisect import bisect_left
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import parser as openmetrics_parser

from dispatcher import Dispatcher, Middleware
from dispatcher.app import create_app
from dispatcher.message import Completion, DlqFilter, Job, Outcome
from dispatcher.observe.metrics import (
    DELIVERY_BUCKETS,
    FastHistogram,
    PoolSeries,
    count_completions,
)
from dispatcher.state import DISPATCHER

from . import factories
from .bench import handlers
from .conftest import require_service
from .kit.metrics import parse, scrape, value
from .kit.receiver import Receiver, receiver
from .kit.run import eventually

ADMIN = {"Authorization": "Bearer adm"}
POOLS = ("ok", "flaky", "dead", "perm", "slow")
AUTH = {"tokens": [{"name": "ops", "token": "adm", "scopes": ["admin"]}]}


def answer(rec: Receiver, seen: list[tuple[str, int, int | str]]) -> Callable[[str, int], Any]:
    """The receiver's script; records (pool, attempt, answer) of every request it answers."""

    def script(pool: str, n: int) -> int | str:
        attempt = int(rec.requests[-1].headers["dispatcher-attempt"])  # this very request
        reply: int | str = {
            "ok": 200,
            "flaky": 503 if attempt == 1 else 200,
            "dead": 500,
            "perm": 400,
            "slow": "hang" if attempt == 1 else 200,
        }[pool]
        seen.append((pool, attempt, reply))
        return reply

    return script


@pytest.fixture
async def rig(
    aiohttp_client: Callable[..., Any],
) -> AsyncIterator[tuple[TestClient[Any, Any], Receiver, list[tuple[str, int, int | str]]]]:
    async with receiver() as rec:
        seen: list[tuple[str, int, int | str]] = []
        rec.script = answer(rec, seen)
        retry = {"max_attempts": 2, "initial_backoff": 0.01, "max_backoff": 0.02}
        settings = factories.webhook_settings(
            rec.url,
            {name: {"retry": retry, "timeout": 0.3, "max_backlog": 100} for name in POOLS},
            [{"match": f"{name}.>", "pools": [name]} for name in POOLS],
            auth=AUTH,
            server={"max_body_bytes": 4096},
        )
        client = await aiohttp_client(create_app(settings))
        yield client, rec, seen


async def post(client: TestClient[Any, Any], body: Any, **kw: Any) -> int:
    response = await client.post("/v1/messages", json=body, **kw)
    return response.status


async def test_counters_equal_what_the_receiver_saw(rig: Any) -> None:
    client, _, seen = rig
    dispatcher = client.app[DISPATCHER]
    per_pool = {"ok": 6, "flaky": 4, "dead": 3, "perm": 2, "slow": 2}
    for pool, n in per_pool.items():
        for i in range(n):
            assert await post(client, {"tag": f"{pool}.x", "payload": i}, headers=ADMIN) == 202
    # Every kind of refusal, each counted once by reason.
    assert await post(client, {"tag": "nowhere", "payload": 1}, headers=ADMIN) == 422
    assert await post(client, {"tag": "", "payload": 1}, headers=ADMIN) == 422
    bad = await client.post("/v1/messages", data=b"{nope", headers=ADMIN)
    assert bad.status == 400
    assert await post(client, {"tag": "ok.x", "payload": 1}) == 401
    big = {"tag": "ok.x", "payload": "x" * 5000}
    assert await post(client, big, headers=ADMIN) == 413
    dup = {"tag": "ok.x", "payload": 1, "id": "same-id"}
    assert await post(client, dup, headers=ADMIN) == 202
    assert await post(client, dup, headers=ADMIN) == 200
    per_pool["ok"] += 1

    # Attempts: ok 7, flaky 4+4, dead 3x2, perm 2, slow 2+2; the dead and perm ones land in
    # the DLQ.
    async def settled() -> bool:
        infos = await dispatcher.pool_infos()
        done = all(i.backlog == 0 and i.in_flight == 0 and i.scheduled == 0 for i in infos)
        return done and sum(i.dlq for i in infos) == 3 + 2

    await eventually(settled, timeout=20)
    replayed = await dispatcher.dlq_replay(DlqFilter(pool="dead"), actor="test")
    assert replayed == 3
    await eventually(settled, timeout=20)
    purged = await dispatcher.dlq_purge(DlqFilter(), actor="test")
    assert purged == 5

    text, samples = await scrape(client)
    saw: Counter[tuple[str, str]] = Counter()
    for pool, _, reply in seen:
        outcome = "timeout" if reply == "hang" else "success" if reply == 200 else "failure"
        saw[(pool, outcome)] += 1
    for pool in POOLS:
        for outcome in ("success", "failure", "timeout"):
            got = value(samples, "dispatcher_deliveries_total", pool=pool, outcome=outcome)
            assert got == saw[(pool, outcome)], (pool, outcome)
        delivered = value(
            samples, "dispatcher_delivery_duration_seconds_count", pool=pool, outcome="success"
        )
        assert delivered == saw[(pool, "success")]
        e2e = value(samples, "dispatcher_end_to_end_seconds_count", pool=pool)
        assert e2e == saw[(pool, "success")]
        attempts = sum(saw[(pool, o)] for o in ("success", "failure", "timeout"))
        assert value(samples, "dispatcher_queue_wait_seconds_count", pool=pool) == attempts
        assert value(samples, "dispatcher_messages_enqueued_total", pool=pool) == per_pool[pool]
        for state in ("ready", "scheduled", "in_flight"):
            assert value(samples, "dispatcher_backlog_messages", pool=pool, state=state) == 0
        assert value(samples, "dispatcher_dlq_messages", pool=pool) == 0
        assert value(samples, "dispatcher_oldest_message_age_seconds", pool=pool) == 0
    # A retry is a failed attempt that was not the last: attempt 1 of flaky, dead and slow.
    retries = Counter(pool for pool, attempt, reply in seen if attempt == 1 and reply != 200)
    retries["perm"] = 0  # 400: permanent, no retry
    for pool in POOLS:
        assert value(samples, "dispatcher_retries_total", pool=pool) == retries[pool], pool
    dead_max = Counter(pool for pool, attempt, reply in seen if attempt == 2 and reply == 500)
    assert (
        value(samples, "dispatcher_dead_lettered_total", pool="dead", reason="max_attempts")
        == (dead_max["dead"])
    )
    assert dead_max["dead"] == 6  # 3 messages, dead twice (before and after the replay)
    assert value(samples, "dispatcher_dead_lettered_total", pool="perm", reason="permanent") == 2
    assert value(samples, "dispatcher_dead_lettered_total", pool="ok", reason="permanent") == 0
    assert value(samples, "dispatcher_dlq_replayed_total", pool="dead") == 3
    assert value(samples, "dispatcher_dlq_purged_total", pool="dead") == 3
    assert value(samples, "dispatcher_dlq_purged_total", pool="perm") == 2
    rejected = {
        "unroutable": 1,
        "invalid": 2,
        "unauthorized": 1,
        "too_large": 1,
        "duplicate": 1,
        "backlog_full": 0,
        "unavailable": 0,
    }
    for reason, n in rejected.items():
        assert value(samples, "dispatcher_messages_rejected_total", reason=reason) == n, reason
    code = value(
        samples, "dispatcher_http_requests_total", handler="/v1/messages", method="POST", code="202"
    )
    assert code == sum(per_pool.values())
    assert value(samples, "dispatcher_build_info", version="0.1.0", store="memory") == 1
    assert value(samples, "dispatcher_asyncio_tasks") > 5
    assert value(samples, "dispatcher_threads") >= 1
    assert "process_cpu_seconds_total" in text
    await promtool_check(text)


async def promtool_check(text: str) -> None:
    if shutil.which("promtool") is None:
        require_service("promtool", "Debian package `prometheus` checks the exposition format")
    proc = await asyncio.create_subprocess_exec(
        "promtool",
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(text.encode())
    assert proc.returncode == 0, out.decode()


async def test_every_config_series_exists_at_zero_before_any_traffic(rig: Any) -> None:
    client, _, _ = rig
    text, samples = await scrape(client)
    for pool in POOLS:
        for outcome in ("success", "failure", "timeout"):
            assert value(samples, "dispatcher_deliveries_total", pool=pool, outcome=outcome) == 0
            count = "dispatcher_delivery_duration_seconds_count"
            assert value(samples, count, pool=pool, outcome=outcome) == 0
        for reason in ("max_attempts", "permanent"):
            assert value(samples, "dispatcher_dead_lettered_total", pool=pool, reason=reason) == 0
        for name in (
            "dispatcher_messages_enqueued_total",
            "dispatcher_retries_total",
            "dispatcher_dlq_replayed_total",
            "dispatcher_dlq_purged_total",
            "dispatcher_rate_limit_wait_seconds_total",
            "dispatcher_pool_busy_workers",
            "dispatcher_pool_paused",
            "dispatcher_pool_rate_limit",
            "dispatcher_pool_circuit_state",
            "dispatcher_circuit_opened_total",
            "dispatcher_queue_wait_seconds_count",
            "dispatcher_end_to_end_seconds_count",
        ):
            assert value(samples, name, pool=pool) == 0, name
        assert value(samples, "dispatcher_pool_concurrency_limit", pool=pool) == 8
    await promtool_check(text)


async def test_ten_thousand_tags_add_no_series(aiohttp_client: Callable[..., Any]) -> None:
    sink = {"type": "python", "handler": "tests.bench.handlers:noop"}
    settings = factories.settings(
        pools={"a": {"sink": sink, "concurrency": 32}}, routes=[{"match": "t.>", "pools": ["a"]}]
    )
    handlers.reset(10_001)
    client = await aiohttp_client(create_app(settings))
    dispatcher = client.app[DISPATCHER]
    await dispatcher.publish([_publish("t.warmup")])
    await scrape(client)  # its own request is counted after it answered
    _, before = await scrape(client)
    await dispatcher.publish([_publish(f"t.tag{i}.x{i % 7}") for i in range(10_000)])
    await asyncio.wait_for(handlers.state["done"].wait(), timeout=40)
    # Metrics count each batch of outcomes once the acker has written it, just after the sink
    # returned: wait until every outcome is written.
    await eventually(lambda: dispatcher.attempt_totals()["a"] == (10_001, 0))
    _, after = await scrape(client)
    assert set(after) == set(before)  # the same series, only values moved
    assert value(after, "dispatcher_deliveries_total", pool="a", outcome="success") == 10_001
    assert not any("tag" in v for _, labels in after for _, v in labels)


def _publish(tag: str) -> Any:
    from dispatcher import Publish

    return Publish(tag, b"{}")


async def test_openmetrics_is_negotiated(rig: Any) -> None:
    client, _, _ = rig
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    text = await response.text()
    assert text.rstrip().endswith("# EOF")
    plain = await client.get("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain")
    parse(await plain.text())


async def test_the_fast_rendering_is_the_standard_one(rig: Any) -> None:
    """/metrics renders the per-pool families itself; prometheus_client's rendering of the
    whole registry must parse to exactly the same samples, in both formats."""
    client, rec, _ = rig
    dispatcher = client.app[DISPATCHER]
    await dispatcher.publish([_publish(f"{pool}.x") for pool in POOLS])
    await rec.wait_for(len(POOLS))
    await eventually(lambda: dispatcher.metrics.series["perm"].dead["permanent"] == 1)
    await scrape(client)  # so that the http series exist in both renderings
    for accept, parser in (
        ("text/plain", parse),
        ("application/openmetrics-text; version=1.0.0", parse_openmetrics),
    ):
        response = await client.get("/metrics", headers={"Accept": accept})
        fast = parser(await response.text())
        encoder, _ = choose_encoder(accept)
        standard = parser(encoder(dispatcher.metrics.registry).decode())
        # Live readings that may move between the two renderings (threads: asyncio's
        # to_thread pool grows while a scrape reads /proc).
        moving = (
            "dispatcher_http",
            "process_",
            "python_gc",
            "dispatcher_event_loop",
            "dispatcher_threads",
        )
        stable = {k: v for k, v in standard.items() if not k[0].startswith(moving)}
        assert {k: fast[k] for k in stable} == stable
        assert {k[0] for k in fast} == {k[0] for k in standard}


def parse_openmetrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in openmetrics_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


async def test_http_handler_label_is_the_route_not_the_path(rig: Any) -> None:
    client, _, _ = rig
    for i in range(5):
        await client.get(f"/v1/messages/id-{i}", headers=ADMIN)
    await client.get("/no/such/path/123")
    _, samples = await scrape(client)
    handlers = {dict(labels)["handler"] for name, labels in samples if "http_requests" in name}
    assert "/v1/messages/{id}" in handlers
    assert "unmatched" in handlers
    assert not any("id-" in h or "123" in h for h in handlers)


class Exploding(Middleware):
    def before_attempt(self, job: Job, attempt: int) -> object:
        raise RuntimeError("observer down")

    def after_attempt(self, completion: Completion, state: object) -> None:
        raise RuntimeError("observer down")


async def test_a_failing_observer_never_breaks_a_delivery(
    aiohttp_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the metrics (per batch of outcomes) nor a user's middleware (per attempt)."""
    from dispatcher.observe.metrics import Metrics

    def explode(*args: Any) -> None:
        raise RuntimeError("observer down")

    monkeypatch.setattr(Metrics, "completed", explode)
    async with receiver() as rec:
        settings = factories.webhook_settings(rec.url, {"a": {}}, [{"match": "t", "pools": ["a"]}])
        dispatcher = Dispatcher(settings, middleware=[Exploding()])
        client = await aiohttp_client(create_app(settings, dispatcher=dispatcher))
        await client.app[DISPATCHER].publish([_publish("t") for _ in range(5)])
        await rec.wait_for(5)
        dispatcher = client.app[DISPATCHER]

        async def delivered() -> bool:
            info = await dispatcher.pool_info("a")
            return info.backlog == 0 and info.in_flight == 0

        await eventually(delivered)
        assert len(rec.requests) == 5  # each once: the failure did not turn into a retry


async def test_a_failing_failure_log_never_breaks_a_retry(
    aiohttp_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log line of a failed attempt is the one observer a pool calls per attempt (per
    failed one); raising there must not lose the attempt's outcome."""
    import dispatcher.dispatcher

    def explode(*args: Any) -> None:
        raise RuntimeError("observer down")

    monkeypatch.setattr(dispatcher.dispatcher, "log_failure", explode)
    async with receiver() as rec:
        rec.script = lambda name, n: 503 if n == 1 else 200
        retry = {"initial_backoff": 0.01, "max_backoff": 0.01}
        settings = factories.webhook_settings(
            rec.url, {"a": {"retry": retry}}, [{"match": "t", "pools": ["a"]}]
        )
        client = await aiohttp_client(create_app(settings))
        d = client.app[DISPATCHER]
        await d.publish([_publish("t")])
        await rec.wait_for(2)
        await eventually(lambda: d.attempt_totals()["a"] == (1, 1))
        assert d.metrics.series["a"].retries == 1


async def test_metrics_are_per_app_not_global(aiohttp_client: Callable[..., Any]) -> None:
    async with receiver() as rec:
        settings = factories.webhook_settings(rec.url, {"a": {}}, [{"match": "t", "pools": ["a"]}])
        one = await aiohttp_client(create_app(settings))
        two = await aiohttp_client(create_app(settings))
        await one.app[DISPATCHER].publish([_publish("t")])
        await rec.wait_for(1)
        await eventually(lambda: one.app[DISPATCHER].metrics.series["a"].success == 1)
        _, a = await scrape(one)
        _, b = await scrape(two)
        assert value(a, "dispatcher_messages_enqueued_total", pool="a") == 1
        assert value(b, "dispatcher_messages_enqueued_total", pool="a") == 0


def test_a_batch_is_bucketed_as_a_bisect_per_value_would() -> None:
    """observe_many against the obvious way: values on the `le` bounds, beyond the last,
    all in one bucket or spread, in any order whether or not they are said to rise."""
    rng = random.Random(7)
    special = [*DELIVERY_BUCKETS, 0.0, 1e-9, 1e6]
    for _ in range(300):
        values = [
            rng.choice(special) if rng.random() < 0.5 else rng.random() * rng.choice([0.01, 20])
            for _ in range(rng.randint(0, 40))
        ]
        expected = [0] * (len(DELIVERY_BUCKETS) + 1)
        for v in values:
            expected[bisect_left(DELIVERY_BUCKETS, v)] += 1
        h = FastHistogram(DELIVERY_BUCKETS)
        h.observe_many(list(values), rising=rng.random() < 0.5)
        assert h.counts == expected
        assert h.sum == pytest.approx(sum(values))


def _by_le(h: FastHistogram) -> dict[str, int]:
    return {le: n for le, n in zip(h.les, h.counts, strict=True) if n}


def test_a_batch_of_outcomes_counts_each_fate_and_time_once() -> None:
    t0, job = factories.T0, factories.job  # every job here was enqueued at T0
    timed_out = factories.attempt(1, t0 + 2, Outcome.TIMEOUT, "timed out", duration=10.0)
    s = PoolSeries()
    count_completions(
        s,
        [
            factories.delivered(job("ok"), t0 + 0.2),  # each attempt here takes 0.5 s...
            factories.delivered(job("early"), t0 - 1),  # another process's clock: before T0
        ],
        [
            factories.retry(job("retried"), t0 + 1, retry_at=t0 + 5),
            Completion(job("timed-out"), timed_out, retry_at=t0 + 20),  # ...but this one
            factories.dead(job("dead"), t0 + 3),
        ],
    )
    assert (s.success, s.failure, s.timeout, s.retries) == (2, 2, 1, 2)
    assert s.dead == {"max_attempts": 0, "permanent": 1}
    # Queue waits 0.2, 0 (never below), 1, 2 and 3 seconds.
    assert _by_le(s.queue_wait) == {"0.005": 1, "0.5": 1, "1.0": 1, "5.0": 2}
    assert s.queue_wait.sum == pytest.approx(6.2)
    assert _by_le(s.duration["success"]) == {"0.5": 2}
    assert _by_le(s.duration["failure"]) == {"0.5": 2}
    assert _by_le(s.duration["timeout"]) == {"10.0": 1}
    # End to end, of the delivered only: 0.7 s, and -0.5 s counted as it came.
    assert _by_le(s.end_to_end) == {"0.01": 1, "1.0": 1}
    assert s.end_to_end.sum == pytest.approx(0.2)
