"""Single messages of concurrent requests are published together (api.Singles), yet every
request gets the answer it would get alone: on the memory store and a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from dispatcher import Accepted, Dispatcher, Publish
from dispatcher.app import create_app
from dispatcher.errors import BacklogFull, Unroutable
from dispatcher.http.api import Singles

from .kit.api import PRODUCE, READ, api_settings
from .kit.run import running


@pytest.fixture(params=["memory", "sqlite"])
async def dispatcher(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Dispatcher]:
    async with running(Dispatcher(api_settings(request.param, tmp_path))) as d:
        yield d


def spy(dispatcher: Dispatcher) -> list[list[Publish]]:
    """Every batch `dispatcher.publish` is called with, in order."""
    calls: list[list[Publish]] = []
    publish = dispatcher.publish

    async def recorded(items: Sequence[Publish]) -> list[Accepted]:
        calls.append(list(items))
        return await publish(items)

    dispatcher.publish = recorded  # type: ignore[method-assign]
    return calls


def item(tag: str, **kw: Any) -> Publish:
    return Publish(tag=tag, payload=b'{"n": 1}', **kw)


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


async def test_a_refused_group_answers_every_request_alone(dispatcher: Dispatcher) -> None:
    await dispatcher.update_pool("tiny", actor="test", paused=True)  # max_backlog 2
    calls = spy(dispatcher)
    items = [item("tiny.a"), item("user.a"), item("nowhere.at.all"), item("tiny.b")]
    items += [item("tiny.c"), item("user.b")]
    results = await outcomes(Singles(dispatcher), items)
    assert len(calls[0]) == 6  # refused as a whole, then one publish per request
    assert sorted(len(c) for c in calls[1:]) == [1] * 6
    tiny = [results[0], results[3], results[4]]
    assert sum(isinstance(r, Accepted) for r in tiny) == 2
    (full,) = [r for r in tiny if not isinstance(r, Accepted)]
    assert isinstance(full, BacklogFull)
    assert full.retry_after
    assert isinstance(results[2], Unroutable)
    assert results[2].pointer == "/tag"
    assert isinstance(results[1], Accepted)
    assert isinstance(results[5], Accepted)
    assert (await dispatcher.pool_info("tiny")).backlog == 2


async def test_producer_ids_are_published_alone(dispatcher: Dispatcher) -> None:
    calls = spy(dispatcher)
    results = await outcomes(
        Singles(dispatcher), [item("user.a", id="one"), item("user.a", id="one")]
    )
    assert [len(c) for c in calls] == [1, 1]
    assert [r.id for r in results] == ["one", "one"]
    assert sorted(r.duplicate for r in results) == [False, True]


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
