"""Single messages of concurrent requests are published together (api.Singles): anonymous
ones, producer ids and traced ones alike, yet every request gets the answer it would get
alone, and its span stays its own: on the memory store, a real SQLite file and Redis."""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from dispatcher import Accepted, Dispatcher, Publish
from dispatcher.app import create_app
from dispatcher.config import Settings
from dispatcher.errors import (
    BacklogFull,
    IdConflict,
    Rejected,
    StoreError,
    Unavailable,
    Unroutable,
)
from dispatcher.http.api import Singles
from dispatcher.message import NewMessage
from dispatcher.observe.tracing import context_from, traceparent_of
from dispatcher.stores.memory import MemoryStore

from .kit.api import PRODUCE, READ, api_settings
from .kit.redis import URL as REDIS_URL
from .kit.redis import drop_prefix, require_redis, unique_prefix
from .kit.run import running

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def settings(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Settings]:
    """The API tests' settings on each store; on Redis under a key prefix of its own (the
    Redis store answers conflicts through Store.enqueue_each's default)."""
    if request.param != "redis":
        yield api_settings(request.param, tmp_path)
        return
    await require_redis()
    prefix = unique_prefix()
    base = api_settings("memory", tmp_path)
    store = msgspec.structs.replace(base.store, url=REDIS_URL, prefix=prefix)
    try:
        yield msgspec.structs.replace(base, store=store)
    finally:
        await drop_prefix(prefix)


@pytest.fixture
async def dispatcher(settings: Settings) -> AsyncIterator[Dispatcher]:
    async with running(Dispatcher(settings)) as d:
        yield d


def spy(dispatcher: Dispatcher) -> list[list[Publish]]:
    """Every group `dispatcher.publish_each` is called with, in order."""
    calls: list[list[Publish]] = []
    publish_each = dispatcher.publish_each

    async def recorded(items: Sequence[Publish]) -> list[Accepted | Rejected]:
        calls.append(list(items))
        return await publish_each(items)

    dispatcher.publish_each = recorded  # type: ignore[method-assign]
    return calls


def item(tag: str, **kw: Any) -> Publish:
    kw.setdefault("payload", b'{"n": 1}')
    return Publish(tag=tag, **kw)


async def outcomes(singles: Singles, items: list[Publish]) -> list[Any]:
    return await asyncio.gather(*(singles.publish(i) for i in items), return_exceptions=True)


async def test_messages_that_arrive_together_are_one_publish(dispatcher: Dispatcher) -> None:
    calls = spy(dispatcher)
    singles = Singles(dispatcher)
    results = await outcomes(singles, [item("user.signup") for _ in range(10)])
    assert len(calls) == 1
    assert len(calls[0]) == 10
    assert all(isinstance(r, Accepted) and r.pools == ("email",) for r in results)
    assert len({r.id for r in results}) == 10
    for r in results:
        assert await dispatcher.get_message(r.id) is not None
    again = await singles.publish(item("user.signup"))  # a later request: a group of its own
    assert len(calls) == 2
    assert again.id not in {r.id for r in results}


async def test_requests_that_arrive_while_a_group_commits_leave_together(
    dispatcher: Dispatcher,
) -> None:
    calls, go = held(dispatcher)
    singles = Singles(dispatcher, max_wait=10.0)
    first = asyncio.create_task(singles.publish(item("user.first")))
    await asyncio.sleep(0.01)  # its group is out, waiting for its commit
    later = []
    for n in range(5):  # one a pass: alone, each would be a group of its own
        later.append(asyncio.create_task(singles.publish(item(f"user.n{n}"))))
        await asyncio.sleep(0.001)
    assert [len(c) for c in calls] == [1]
    go.set()
    results = await asyncio.gather(first, *later)
    assert [len(c) for c in calls] == [1, 5]
    assert [r.tag for r in results] == ["user.first"] + [f"user.n{n}" for n in range(5)]


def held(dispatcher: Dispatcher) -> tuple[list[list[Publish]], asyncio.Event]:
    """Every group `publish_each` is called with, each held until the event is set."""
    calls: list[list[Publish]] = []
    publish_each = dispatcher.publish_each
    go = asyncio.Event()

    async def slow(items: Sequence[Publish]) -> list[Accepted | Rejected]:
        calls.append(list(items))
        await go.wait()  # as a commit waiting for the disk
        return await publish_each(items)

    dispatcher.publish_each = slow  # type: ignore[method-assign]
    return calls, go


async def test_a_group_waits_at_most_max_wait(dispatcher: Dispatcher) -> None:
    calls, go = held(dispatcher)
    singles = Singles(dispatcher, max_wait=0.05)
    first = asyncio.create_task(singles.publish(item("user.first")))
    await asyncio.sleep(0.005)
    later = asyncio.create_task(singles.publish(item("user.later")))
    await asyncio.sleep(0.01)
    assert [len(c) for c in calls] == [1]  # waiting behind the first
    await asyncio.sleep(0.1)
    assert [len(c) for c in calls] == [1, 1]  # overdue: it went beside the first
    go.set()
    assert [r.tag for r in await asyncio.gather(first, later)] == ["user.first", "user.later"]
    with pytest.raises(ValueError, match="max_in_flight"):
        Singles(dispatcher, max_in_flight=0)


async def test_a_failed_group_lets_the_waiting_one_go_in_a_context_of_its_own(
    dispatcher: Dispatcher,
) -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
    publish_each = dispatcher.publish_each
    go = asyncio.Event()
    seen: list[tuple[int, str]] = []

    async def fails_first(items: Sequence[Publish]) -> list[Accepted | Rejected]:
        seen.append((len(items), request_id.get()))
        if len(seen) == 1:
            await go.wait()
            raise Unavailable("the store is away", retry_after=1.0)
        return await publish_each(items)

    dispatcher.publish_each = fails_first  # type: ignore[method-assign]
    singles = Singles(dispatcher)

    async def request(n: int) -> Accepted:
        request_id.set(f"request {n}")  # as a request's log context
        return await singles.publish(item(f"user.n{n}"))

    first = asyncio.create_task(request(0))
    await asyncio.sleep(0.001)
    later = [asyncio.create_task(request(n)) for n in (1, 2)]
    await asyncio.sleep(0.001)
    go.set()
    with pytest.raises(Unavailable):
        await first
    assert [r.tag for r in await asyncio.gather(*later)] == ["user.n1", "user.n2"]
    assert seen == [(1, "-"), (2, "-")]  # no request's context


async def test_refused_requests_get_their_own_answers_in_the_same_group(
    dispatcher: Dispatcher,
) -> None:
    await dispatcher.update_pool("tiny", actor="test", paused=True)  # max_backlog 2
    calls = spy(dispatcher)
    items = [item("tiny.a"), item("user.a"), item("nowhere.at.all"), item("tiny.b")]
    items += [item("tiny.c"), item("user.b")]
    results = await outcomes(Singles(dispatcher), items)
    assert [len(c) for c in calls] == [6]  # one publish; nobody is sent off to publish alone
    # Backlog room goes in arrival order, as it would to requests served one by one.
    assert [type(r) for r in results] == [
        Accepted,
        Accepted,
        Unroutable,
        Accepted,
        BacklogFull,
        Accepted,
    ]
    assert results[4].retry_after
    assert results[2].pointer == "/tag"
    assert (await dispatcher.pool_info("tiny")).backlog == 2
    for r in results:
        if isinstance(r, Accepted):
            assert await dispatcher.get_message(r.id) is not None


async def test_producer_ids_join_the_group(dispatcher: Dispatcher) -> None:
    calls = spy(dispatcher)
    results = await outcomes(
        Singles(dispatcher), [item("user.a", id="one"), item("user.a", id="one")]
    )
    assert [len(c) for c in calls] == [2]
    assert [r.id for r in results] == ["one", "one"]
    assert [r.duplicate for r in results] == [False, True]


async def test_a_request_that_left_is_not_published(dispatcher: Dispatcher) -> None:
    await dispatcher.update_pool("tiny", actor="test", paused=True)
    calls = spy(dispatcher)
    singles = Singles(dispatcher)
    gone = asyncio.create_task(singles.publish(item("tiny.gone")))
    kept = asyncio.create_task(singles.publish(item("tiny.kept")))
    await asyncio.sleep(0)  # both joined the group; it leaves on the next pass
    gone.cancel()
    accepted = await kept
    assert [[i.tag for i in c] for c in calls] == [["tiny.kept"]]
    assert (await dispatcher.pool_info("tiny")).backlog == 1
    assert accepted.tag == "tiny.kept"


class _FailsOnce(MemoryStore):
    """A store whose next write of single messages fails, as a store that went away."""

    fail = True

    async def enqueue_each(self, batch: Sequence[NewMessage]) -> list[bool | IdConflict]:
        if self.fail:
            self.fail = False
            raise StoreError("disk I/O error")
        return await super().enqueue_each(batch)


async def test_a_store_that_fails_answers_503_to_whom_it_concerns(tmp_path: Path) -> None:
    store = _FailsOnce()
    async with running(Dispatcher(api_settings("memory", tmp_path), store=store)) as d:
        await d.update_pool("email", actor="test", paused=True)
        items = [item("user.a", id="kept"), item("nowhere.at.all"), item("user.b")]
        results = await outcomes(Singles(d), items)
        assert [type(r) for r in results] == [Unavailable, Unroutable, Unavailable]
        assert results[0].retry_after
        assert (await d.pool_info("email")).backlog == 0  # the reservations went back
        assert await d.get_message("kept") is None
        again = await outcomes(Singles(d), [item("user.a", id="kept")])
        assert [(type(r), r.duplicate) for r in again] == [(Accepted, False)]
        assert (await d.pool_info("email")).backlog == 1


#: (item, what it gets alone): the mixed group of the next test, in arrival order
MIXED: list[tuple[Publish, Any]] = [
    (item("user.a", id="fresh-1"), (202, "fresh-1")),
    (item("user.a"), (202, None)),  # anonymous: an id of the dispatcher's
    (item("user.a", id="old-1"), (200, "old-1")),  # a duplicate of an earlier request
    (item("user.a", id="old-2", payload=b'"other"'), IdConflict),  # a conflict with one
    (item("user.a", id="twin", payload=b'"x"'), (202, "twin")),
    (item("user.a", id="twin", payload=b'"x"'), (200, "twin")),  # a duplicate in the group
    (item("user.a", id="twin", payload=b'"y"'), IdConflict),  # a conflict in the group
    (item("user.a", trace=PARENT), (202, None)),  # traced by its producer
    (item("user.a", id="fresh-2", trace=PARENT), (202, "fresh-2")),
    (item("nowhere.at.all", id="lost"), Unroutable),
    (item("tiny.a", id="full"), BacklogFull),
    (item("user.a", id="fresh-3"), (202, "fresh-3")),
]


async def test_a_mixed_group_answers_each_request_as_if_alone(
    settings: Settings, exporter: Any
) -> None:
    provider, memory = exporter
    dispatcher = Dispatcher(settings, tracer_provider=provider)
    async with running(dispatcher):
        for pool in ("email", "tiny"):  # what was stored stays to be counted; tiny: 2 at most
            await dispatcher.update_pool(pool, actor="test", paused=True)
        await dispatcher.publish([item("user.a", id="old-1"), item("user.a", id="old-2")])
        await dispatcher.publish([item("tiny.a"), item("tiny.b")])
        memory.clear()
        calls = spy(dispatcher)
        singles = Singles(dispatcher)
        tracer = provider.get_tracer("test")

        async def request(publish: Publish) -> tuple[ReadableSpan, Any]:
            """As the HTTP edge runs it: inside the request's own SERVER span."""
            parent = context_from(publish.trace)
            with tracer.start_as_current_span("POST", parent, SpanKind.SERVER) as server:
                try:
                    return server, await singles.publish(publish)
                except Rejected as exc:
                    return server, exc

        answers = await asyncio.gather(*(request(i) for i, _ in MIXED))
        assert [len(c) for c in calls] == [len(MIXED)]  # one group, traced ones included

        sends = {s.parent.span_id: s for s in memory.get_finished_spans() if s.parent}
        sends = {k: s for k, s in sends.items() if s.kind is SpanKind.PRODUCER}
        assert len(sends) == len(MIXED)
        for (publish, alone), (server, answer) in zip(MIXED, answers, strict=True):
            # Its PRODUCER span is a child of its own request's span, in that trace.
            send = sends[server.context.span_id]
            assert send.context.trace_id == server.context.trace_id
            if publish.trace is not None:
                assert f"{send.context.trace_id:032x}" == TRACE_ID
            if isinstance(alone, type):
                assert type(answer) is alone, (publish, answer)
                assert answer.pointer == {IdConflict: "/id", Unroutable: "/tag"}.get(alone)
                assert send.status.status_code is StatusCode.ERROR
                continue
            status, message_id = alone
            assert isinstance(answer, Accepted), (publish, answer)
            assert answer.duplicate == (status == 200)
            assert answer.id == (message_id or answer.id)
            assert send.attributes is not None
            assert send.attributes["messaging.message.id"] == answer.id
            stored = await dispatcher.get_message(answer.id)
            assert stored is not None
            if not answer.duplicate:  # stored as sent, in its own creation context
                assert stored.message.payload == publish.payload
                assert stored.message.trace == traceparent_of(send)  # type: ignore[arg-type]
        # What the refused requests sent was not stored; the first of the twins was.
        for message_id, payload in [("old-2", b'{"n": 1}'), ("twin", b'"x"')]:
            stored = await dispatcher.get_message(message_id)
            assert stored is not None
            assert stored.message.payload == payload
        assert await dispatcher.get_message("lost") is None
        assert await dispatcher.get_message("full") is None
        assert (await dispatcher.pool_info("tiny")).backlog == 2
        assert (await dispatcher.pool_info("email")).backlog == 2 + 6


async def test_concurrent_requests_get_their_own_answers(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(api_settings("sqlite", tmp_path)))
    bodies = [{"tag": "user.x", "payload": n} for n in range(20)]
    bodies[7] = {"tag": "nowhere.at.all", "payload": 7}
    responses = await asyncio.gather(
        *(client.post("/v1/messages", json=b, headers=PRODUCE) for b in bodies)
    )
    answers = [await r.json(content_type=None) for r in responses]
    assert responses[7].status == 422
    assert answers[7]["errors"][0]["pointer"] == "/tag"
    ok = [(r, a) for n, (r, a) in enumerate(zip(responses, answers, strict=True)) if n != 7]
    assert all(r.status == 202 for r, _ in ok)
    assert len({a["id"] for _, a in ok}) == 19
    for n, (r, a) in enumerate(zip(responses, answers, strict=True)):
        if n == 7:
            continue
        view = await (await client.get(r.headers["Location"], headers=READ)).json()
        assert view["payload"] == n
        assert view["id"] == a["id"]


async def test_a_mixed_burst_over_http(
    aiohttp_client: Any, settings: Settings, exporter: Any
) -> None:
    """The same mix as concurrent HTTP requests, Idempotency-Keys and CloudEvents among
    them, with the SDK recording: whatever groups they formed, each answer is its own."""
    provider, memory = exporter
    dispatcher = Dispatcher(settings, tracer_provider=provider)
    client = await aiohttp_client(create_app(settings, dispatcher=dispatcher))
    await dispatcher.update_pool("email", actor="test", paused=True)
    await dispatcher.publish([item("user.a", id="old-1")])
    memory.clear()

    def post(body: Any, **headers: str) -> Any:
        return client.post("/v1/messages", json=body, headers={**PRODUCE, **headers})

    requests = [
        post({"tag": "user.a", "payload": 1, "id": "fresh-1"}),
        post({"tag": "user.a", "payload": 1}),
        post({"tag": "user.a", "payload": {"n": 1}, "id": "old-1"}),
        post({"tag": "user.a", "payload": {"n": 2}, "id": "old-1"}),
        post({"tag": "user.a", "payload": 5}, **{"Idempotency-Key": "order 5"}),
        post({"tag": "user.a", "payload": 1}, traceparent=PARENT),
        post({"tag": "nowhere.at.all", "payload": 1, "id": "lost"}),
        post({"tag": "user.a", "payload": "bad", "delay": -1, "id": "invalid"}),
    ] + [post({"tag": "user.a", "payload": n % 2, "id": "twin"}) for n in range(6)]
    responses = await asyncio.gather(*requests)
    statuses = [r.status for r in responses]
    bodies = [await r.json(content_type=None) for r in responses]
    assert statuses[:8] == [202, 202, 200, 422, 202, 202, 422, 422]
    assert bodies[2] == {**bodies[2], "id": "old-1", "duplicate": True}
    assert bodies[3]["errors"][0]["pointer"] == "/id"
    assert bodies[6]["errors"][0]["pointer"] == "/tag"
    assert bodies[7]["errors"][0]["pointer"] == "/delay"
    # The twins: whichever came first is stored; the same payload is its duplicate, the
    # other a conflict.
    twin = await dispatcher.get_message("twin")
    assert twin is not None
    first = json.loads(twin.message.payload)
    twins = statuses[8:]
    for n, status in enumerate(twins):
        assert status in ((200, 202) if n % 2 == first else (422,)), twins
    assert sorted(twins) == [200, 200, 202, 422, 422, 422]
    for n in (0, 1, 4, 5):
        stored = await dispatcher.get_message(bodies[n]["id"])
        assert stored is not None
        assert json.loads(stored.message.payload) == [1, 1, None, None, 5, 1][n]
    assert await dispatcher.get_message("lost") is None
    assert await dispatcher.get_message("invalid") is None
    assert (await dispatcher.pool_info("email")).backlog == 1 + 5
    # Every request's PRODUCER span is a child of its own SERVER span; the traced request
    # continued its producer's trace.
    finished = memory.get_finished_spans()
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    sends = [s for s in finished if s.kind is SpanKind.PRODUCER]
    assert len(servers) == len(requests)
    assert len(sends) == len(requests) - 1  # the invalid one never reached ingest
    by_server = {s.context.span_id: s for s in servers}
    for send in sends:
        assert send.parent is not None
        server = by_server[send.parent.span_id]
        assert send.context.trace_id == server.context.trace_id
        code = server.attributes["http.response.status_code"] if server.attributes else None
        assert (send.status.status_code is StatusCode.ERROR) == (code == 422)
    assert sum(f"{s.context.trace_id:032x}" == TRACE_ID for s in sends) == 1
