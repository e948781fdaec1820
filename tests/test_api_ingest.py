"""Ingest over real HTTP (aiohttp_client), on the memory store and a real SQLite file:
single and batch messages, idempotency, backpressure, and every kind of bad input, each of
which must answer a 4xx problem+json and change nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web_protocol

from dispatcher.app import create_app
from dispatcher.http import malformed
from dispatcher.state import DISPATCHER

from .kit.api import ADMIN, PRODUCE, READ, api_settings

Client = Any


@pytest.fixture
def as_served() -> Iterator[None]:
    """What `dispatcher serve` installs process-wide: malformed requests as problem+json."""
    malformed.install()
    yield
    malformed.uninstall()


@pytest.fixture
def client(as_served: None, client: Client) -> Client:
    """The shared API client (tests/conftest.py), with `dispatcher serve`'s patch installed
    before the app is built."""
    return client


def test_building_the_app_patches_nothing_process_wide(tmp_path: Path) -> None:
    before = web_protocol.RequestHandler.handle_error
    create_app(api_settings("memory", tmp_path))
    assert web_protocol.RequestHandler.handle_error is before


async def backlog(client: Client) -> int:
    resp = await client.get("/v1/pools/email", headers=READ)
    info = await resp.json()
    return int(info["backlog"]) + int(info["in_flight"])


async def problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = await resp.json(content_type=None)
    assert body["status"] == status
    return body


async def test_single_message_is_accepted_located_and_visible(client: Client) -> None:
    resp = await client.post(
        "/v1/messages", json={"tag": "user.signup", "payload": {"user": 42}}, headers=PRODUCE
    )
    assert resp.status == 202
    body = await resp.json()
    assert body["tag"] == "user.signup"
    assert body["pools"] == ["email"]
    assert body["status"] == "queued"
    assert body["duplicate"] is False
    assert resp.headers["Location"] == f"/v1/messages/{body['id']}"
    status = await client.get(resp.headers["Location"], headers=READ)
    assert status.status == 200
    view = await status.json()
    assert view["id"] == body["id"]
    assert view["payload"] == {"user": 42}
    assert set(view["pools"]) == {"email"}
    assert view["pools"]["email"]["status"] in ("queued", "in_flight", "delivered")


async def test_payload_bytes_are_kept_as_sent(client: Client) -> None:
    raw = b'{"tag": "user.x", "payload": {"b" :  2, "a":1.50}}'
    resp = await client.post("/v1/messages", data=raw, headers=PRODUCE)
    assert resp.status == 202
    message_id = (await resp.json())["id"]
    status = await client.get(f"/v1/messages/{message_id}", headers=READ)
    assert b'{"b" :  2, "a":1.50}' in await status.read()


async def test_unknown_message_is_404(client: Client) -> None:
    await problem(await client.get("/v1/messages/nope", headers=READ), 404)


async def test_batch_is_all_or_nothing_and_ordered(client: Client) -> None:
    items = [{"tag": "user.a", "payload": i} for i in range(5)]
    resp = await client.post("/v1/messages/batch", json=items, headers=PRODUCE)
    assert resp.status == 202
    results = (await resp.json())["results"]
    assert [r["tag"] for r in results] == ["user.a"] * 5
    assert len({r["id"] for r in results}) == 5
    before = await backlog(client)
    bad = [*items, {"tag": "nowhere.x", "payload": 1}]
    body = await problem(await client.post("/v1/messages/batch", json=bad, headers=PRODUCE), 422)
    assert body["errors"][0]["pointer"] == "/5/tag"
    bad = [{"tag": "user.a", "payload": 1}, {"tag": "user.a", "payload": 1, "priority": "x"}]
    body = await problem(await client.post("/v1/messages/batch", json=bad, headers=PRODUCE), 422)
    assert body["errors"][0]["pointer"] == "/1/priority"
    assert await backlog(client) <= before


async def test_batch_limits(client: Client) -> None:
    small = [{"tag": "user.a", "payload": 0}] * 1001
    await problem(await client.post("/v1/messages/batch", json=small, headers=PRODUCE), 413)
    await problem(await client.post("/v1/messages/batch", json=[], headers=PRODUCE), 422)
    resp = await client.post("/v1/messages/batch", json=small[:1000], headers=PRODUCE)
    assert resp.status == 202
    assert len((await resp.json())["results"]) == 1000


async def test_repeated_id_is_a_duplicate_and_other_content_a_conflict(client: Client) -> None:
    msg = {"tag": "user.a", "payload": {"n": 1}, "id": "order-1"}
    first = await client.post("/v1/messages", json=msg, headers=PRODUCE)
    assert first.status == 202
    again = await client.post("/v1/messages", json=msg, headers=PRODUCE)
    assert again.status == 200
    body = await again.json()
    assert body == {**(await first.json()), "duplicate": True}
    other = {**msg, "payload": {"n": 2}}
    conflict = await problem(await client.post("/v1/messages", json=other, headers=PRODUCE), 422)
    assert conflict["errors"][0]["pointer"] == "/id"
    batch = [
        {"tag": "user.a", "payload": 1, "id": "b-1"},
        {"tag": "user.a", "payload": 2, "id": "b-1"},
    ]
    body = await problem(await client.post("/v1/messages/batch", json=batch, headers=PRODUCE), 422)
    assert body["errors"][0]["pointer"] == "/1/id"
    resp = await client.post("/v1/messages/batch", json=[msg, msg], headers=PRODUCE)
    assert [r["duplicate"] for r in (await resp.json())["results"]] == [True, True]


async def test_idempotency_key_header(client: Client) -> None:
    headers = {**PRODUCE, "Idempotency-Key": "checkout 2024/11 #7"}
    msg = {"tag": "user.a", "payload": 1}
    first = await client.post("/v1/messages", json=msg, headers=headers)
    assert first.status == 202
    again = await client.post("/v1/messages", json=msg, headers=headers)
    assert again.status == 200
    assert (await again.json())["id"] == (await first.json())["id"]
    changed = {"tag": "user.a", "payload": 2}
    await problem(await client.post("/v1/messages", json=changed, headers=headers), 422)
    await problem(
        await client.post("/v1/messages", json=msg, headers={**PRODUCE, "Idempotency-Key": ""}),
        400,
    )


async def test_dedup_window_is_persisted_past_expiry(tmp_path: Path, aiohttp_client: Any) -> None:
    settings = api_settings("sqlite", tmp_path)
    client = await aiohttp_client(create_app(settings))
    msg = {"tag": "user.a", "payload": 1, "id": "kept"}
    assert (await client.post("/v1/messages", json=msg, headers=PRODUCE)).status == 202
    dispatcher = client.app[DISPATCHER]
    # Delivered messages are forgotten after the retention; the id is remembered longer
    # (its window ends a day from now). Whether or not "kept" was delivered yet, the store
    # must still know the id: as a message, or as a remembered id.
    await dispatcher.store.expire(1e12, ids_before=time.time())
    assert (await client.post("/v1/messages", json=msg, headers=PRODUCE)).status == 200
    await client.close()
    again = await aiohttp_client(create_app(settings))
    assert (await again.post("/v1/messages", json=msg, headers=PRODUCE)).status == 200


async def test_backpressure_429_and_503_with_retry_after(client: Client) -> None:
    resp = await client.patch("/v1/pools/tiny", json={"paused": True}, headers=ADMIN)
    assert resp.status == 200
    for _ in range(2):
        ok = await client.post("/v1/messages", json={"tag": "tiny.x", "payload": 1}, headers=ADMIN)
        assert ok.status == 202
    full = await client.post("/v1/messages", json={"tag": "tiny.x", "payload": 1}, headers=ADMIN)
    await problem(full, 429)
    assert int(full.headers["Retry-After"]) >= 1
    dispatcher = client.app[DISPATCHER]
    dispatcher.draining = True
    try:
        down = await client.post(
            "/v1/messages", json={"tag": "user.x", "payload": 1}, headers=ADMIN
        )
        await problem(down, 503)
        assert int(down.headers["Retry-After"]) >= 1
    finally:
        dispatcher.draining = False


DEEP = b"[" * 64 + b"]" * 64
BAD_BODIES = [
    (b'{"tag": "user.a", "payload": ', 400),  # truncated
    (b'{"tag": "user.a", "payload": \xff}', 400),  # invalid UTF-8
    (b'{"tag": "user.a", "payload": "\xed\xa0\x80"}', 400),  # UTF-8-encoded surrogate
    (b'{"tag": "user.a", "payload": NaN}', 400),
    (b'{"tag": "user.a", "payload": Infinity}', 400),
    (b'{"tag": "user.a", "payload": 1e999}', 400),
    (b'{"tag": "user.a", "tag": "user.b", "payload": 1}', 400),  # duplicate key
    (b'{"tag": "user.a", "payload": {"x": 1, "x": 2}}', 400),  # duplicate in the payload
    (b'{"tag": "user.a", "payload": {"\\u0078": 1, "x": 2}}', 400),  # same key, escaped
    (b'{"tag": "user.a", "payload": "\\ud800"}', 400),  # lone surrogate
    (b'{"tag": "user.a", "payload": ' + DEEP + b"}", 400),  # 65 levels in all
    (b'{"tag": "user.a", "payload": ' + b"1" * 4301 + b"}", 400),
    (b'{"tag": "user.a", "payload": 0.' + b"1" * 4301 + b"}", 400),
    (b'{"tag": "user.a", "payload": 1} trailing', 400),
    (b"", 400),
    (b'["not", "an", "object"]', 422),
    (b'{"payload": 1}', 422),  # missing tag
    (b'{"tag": "", "payload": 1}', 422),
    (b'{"tag": "user..a", "payload": 1}', 422),
    (b'{"tag": "user.a b", "payload": 1}', 422),
    (b'{"tag": "user.' + b"a" * 251 + b'", "payload": 1}', 422),  # 256 characters
    (b'{"tag": 5, "payload": 1}', 422),
    (b'{"tag": "user.a"}', 422),  # missing payload
    (b'{"tag": "user.a", "payload": 1, "extra": 1}', 422),
    (b'{"tag": "user.a", "payload": 1, "priority": 1.5}', 422),
    (b'{"tag": "user.a", "payload": 1, "delay": -1}', 422),
    (b'{"tag": "user.a", "payload": 1, "id": "has space"}', 422),
    (b'{"tag": "user.a", "payload": 1, "headers": {"x": 1}}', 422),
    (b'{"tag": "user.a", "payload": 1, "headers": {"x": "a\\r\\nb"}}', 422),
    (b'{"tag": "user.a", "payload": 1, "headers": {"bad name": "v"}}', 422),
    (b'{"tag": "nowhere.at.all", "payload": 1}', 422),  # unknown tag
]


@pytest.mark.parametrize(("body", "status"), BAD_BODIES)
async def test_bad_input_is_a_4xx_problem_and_changes_nothing(
    client: Client, body: bytes, status: int
) -> None:
    before = await backlog(client)
    resp = await client.post("/v1/messages", data=body, headers=PRODUCE)
    await problem(resp, status)
    assert await backlog(client) == before


async def test_deepest_allowed_payload_is_accepted(client: Client) -> None:
    nested = b"[" * 63 + b"]" * 63
    body = b'{"tag": "user.a", "payload": ' + nested + b"}"
    assert (await client.post("/v1/messages", data=body, headers=PRODUCE)).status == 202
    big = b'{"tag": "user.a", "payload": "' + b"1" * 5000 + b'"}'
    assert (await client.post("/v1/messages", data=big, headers=PRODUCE)).status == 202


async def test_problems_name_the_field(client: Client) -> None:
    resp = await client.post(
        "/v1/messages", json={"tag": "user.a", "payload": 1, "priority": "high"}, headers=PRODUCE
    )
    assert (await problem(resp, 422))["errors"][0]["pointer"] == "/priority"
    resp = await client.post("/v1/messages", json={"payload": 1}, headers=PRODUCE)
    assert (await problem(resp, 422))["errors"][0]["pointer"] == "/tag"
    resp = await client.post(
        "/v1/messages", json={"tag": "user.a", "payload": 1, "x": 1}, headers=PRODUCE
    )
    assert (await problem(resp, 422))["errors"][0]["pointer"] == "/x"


async def test_body_over_the_limit_is_413_with_or_without_length(client: Client) -> None:
    big = b'{"tag": "user.a", "payload": "' + b"x" * 70000 + b'"}'
    await problem(await client.post("/v1/messages", data=big, headers=PRODUCE), 413)

    async def chunks() -> Any:
        for _ in range(100):
            yield b"x" * 1000

    resp = await client.post("/v1/messages", data=chunks(), headers=PRODUCE)
    await problem(resp, 413)


async def test_413_by_content_length_does_not_read_the_body(client: Client) -> None:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer app-token\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
    )
    await writer.drain()
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    writer.close()


async def _raw(client: Client, request: bytes) -> tuple[bytes, bytes]:
    """Send `request` as bytes (no client library lets these through); (head, body)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()  # the server closes the connection after it
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


async def test_control_characters_in_headers_are_refused_as_problems(client: Client) -> None:
    before = await backlog(client)
    message = b'{"tag": "user.a", "payload": 1}'
    for value in (b"a\rb", b"a\nb", b"a\x00b"):
        head, body = await _raw(
            client,
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer app-token\r\n"
            b"Content-Type: application/json\r\nIdempotency-Key: " + value + b"\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(message), message),
        )
        assert head.split()[1] == b"400"
        assert b"Content-Type: application/problem+json" in head
        assert json.loads(body)["status"] == 400
    assert await backlog(client) == before


async def test_a_malformed_request_is_not_echoed_back_or_logged(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for request in (
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer app-token\x00\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: app-token\r\n\r\n",
        b"app-token / HTTP/1.1\r\n\r\n",
    ):
        head, body = await _raw(client, request)
        assert head.split()[1] == b"400"
        assert json.loads(body)["title"] == "Bad Request"
        assert b"app-token" not in head + body
    assert "app-token" not in caplog.text
