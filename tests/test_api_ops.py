"""Operator endpoints and auth over real HTTP: pools, the DLQ (filters, cursors, replay and
purge with dry runs), the audit log, the WebSocket subscription, scopes, and slow clients."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatcher.app import create_app

from .factories import settings
from .kit.api import ADMIN, OPERATE, PRODUCE, READ, api_settings
from .kit.run import eventually

Client = Any


async def dead(client: Client, n: int, tag: str = "doom.x") -> list[str]:
    items = [{"tag": tag, "payload": {"n": i}} for i in range(n)]
    resp = await client.post("/v1/messages/batch", json=items, headers=PRODUCE)
    ids = [r["id"] for r in (await resp.json())["results"]]

    async def all_dead() -> bool:
        page = await (await client.get("/v1/dlq?limit=1000", headers=READ)).json()
        return {i["id"] for i in page["items"]} >= set(ids)

    await eventually(all_dead)
    return ids


async def test_pools_list_get_and_patch(client: Client) -> None:
    body = await (await client.get("/v1/pools", headers=READ)).json()
    names = {p["name"] for p in body["pools"]}
    assert names == {"email", "doomed", "tiny", "live"}
    for field in ("paused", "rate", "burst", "concurrency", "backlog", "in_flight"):
        assert field in body["pools"][0]
    for field in ("scheduled", "dlq", "oldest_age_seconds"):
        assert field in body["pools"][0]
    resp = await client.patch(
        "/v1/pools/email", json={"rate": 10, "burst": 3, "concurrency": 2}, headers=OPERATE
    )
    assert resp.status == 200
    info = await resp.json()
    assert (info["rate"], info["burst"], info["concurrency"]) == (10, 3, 2)
    info = await (
        await client.patch("/v1/pools/email", json={"rate": None}, headers=OPERATE)
    ).json()
    assert info["rate"] is None
    info = await (
        await client.patch("/v1/pools/email", json={"paused": True}, headers=OPERATE)
    ).json()
    assert info["paused"] is True
    assert (await (await client.get("/v1/pools/email", headers=READ)).json())["paused"] is True
    audit = await (await client.get("/v1/audit", headers=READ)).json()
    assert [e["actor"] for e in audit["items"]] == ["operator"] * 3
    assert audit["items"][0]["action"] == "pool.update"


@pytest.mark.parametrize(
    "body",
    [
        {"rate": 0},
        {"rate": -1},
        {"rate": "fast"},
        {"burst": 0},
        {"burst": 1.5},
        {"concurrency": 0},
        {"concurrency": 10001},
        {"paused": "yes"},
        {"color": "red"},
        {},
        [],
    ],
)
async def test_bad_pool_patches_are_422(client: Client, body: Any) -> None:
    resp = await client.patch("/v1/pools/email", json=body, headers=OPERATE)
    assert resp.status == 422, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await (await client.get("/v1/audit", headers=READ)).json())["items"] == []


async def test_unknown_pool_is_404(client: Client) -> None:
    assert (await client.get("/v1/pools/nope", headers=READ)).status == 404
    resp = await client.patch("/v1/pools/nope", json={"rate": 1}, headers=OPERATE)
    assert resp.status == 404


async def test_dlq_filters_and_cursor(client: Client) -> None:
    ids = await dead(client, 5)
    other = await dead(client, 2, "doom.y")
    page = await (await client.get("/v1/dlq?tag=doom.x&limit=2", headers=READ)).json()
    assert len(page["items"]) == 2
    item = page["items"][0]
    assert set(item) >= {"id", "pool", "tag", "attempts", "error", "failed_at", "payload"}
    assert item["pool"] == "doomed"
    assert item["error"] == "refused doom.x"
    seen = [i["id"] for i in page["items"]]
    while page["next_cursor"]:
        url = f"/v1/dlq?tag=doom.x&limit=2&cursor={page['next_cursor']}"
        page = await (await client.get(url, headers=READ)).json()
        seen += [i["id"] for i in page["items"]]
    assert sorted(seen) == sorted(ids)
    by_error = await (await client.get("/v1/dlq?error=REFUSED%20DOOM.Y", headers=READ)).json()
    assert sorted(i["id"] for i in by_error["items"]) == sorted(other)
    late = await (await client.get("/v1/dlq?since=2999-01-01T00:00:00Z", headers=READ)).json()
    assert late["items"] == []
    for query in ("since=yesterday", "since=2024-01-01T00:00:00", "cursor=zzz", "limit=0"):
        resp = await client.get(f"/v1/dlq?{query}", headers=READ)
        assert resp.status == 400, query
        assert resp.content_type == "application/problem+json"
    resp = await client.get("/v1/dlq?cursor=1e999:99999999999999999", headers=READ)
    assert resp.status == 400


async def test_dlq_replay_and_purge(client: Client) -> None:
    ids = await dead(client, 3)
    resp = await client.post(
        "/v1/dlq/replay", json={"filter": {"tag": "doom.x"}, "dry_run": True}, headers=OPERATE
    )
    assert await resp.json() == {"count": 3, "dry_run": True}
    resp = await client.post("/v1/dlq/replay", json={"ids": ids[:1], "rate": 100}, headers=OPERATE)
    assert await resp.json() == {"count": 1, "dry_run": False}
    status = await (await client.get(f"/v1/messages/{ids[0]}", headers=READ)).json()

    async def dead_again() -> bool:
        view = await (await client.get(f"/v1/messages/{ids[0]}", headers=READ)).json()
        return (
            bool(view["pools"]["doomed"]["history"]) and view["pools"]["doomed"]["status"] == "dead"
        )

    await eventually(dead_again)
    assert status["id"] == ids[0]
    resp = await client.post("/v1/dlq/purge", json={"filter": {}, "dry_run": True}, headers=OPERATE)
    assert (await resp.json())["count"] == 3
    resp = await client.post("/v1/dlq/purge", json={"filter": {"pool": "doomed"}}, headers=OPERATE)
    assert await resp.json() == {"count": 3, "dry_run": False}
    assert (await (await client.get("/v1/dlq", headers=READ)).json())["items"] == []
    audit = await (await client.get("/v1/audit?limit=1", headers=READ)).json()
    assert audit["items"][0]["action"] == "dlq.purge"
    assert audit["items"][0]["count"] == 3
    assert audit["next_cursor"] is not None
    older = await client.get(f"/v1/audit?cursor={audit['next_cursor']}", headers=READ)
    assert (await older.json())["items"][0]["action"] == "dlq.replay"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"ids": ["a"], "filter": {}},
        {"ids": []},
        {"ids": [1]},
        {"filter": {"since": "not a time"}},
        {"filter": {"colour": "red"}},
        {"filter": {}, "rate": 0},
        {"filter": {}, "dry_run": "yes"},
    ],
)
async def test_bad_dlq_actions_are_422(client: Client, body: Any) -> None:
    resp = await client.post("/v1/dlq/replay", json=body, headers=OPERATE)
    assert resp.status == 422, await resp.text()
    resp = await client.post(
        "/v1/dlq/purge", json={**body, "rate": None} if "rate" in body else body, headers=OPERATE
    )
    assert resp.status == 422, await resp.text()


async def test_scopes(client: Client) -> None:
    msg = {"tag": "user.a", "payload": 1}
    assert (await client.post("/v1/messages", json=msg)).status == 401
    resp = await client.post("/v1/messages", json=msg, headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert resp.content_type == "application/problem+json"
    assert (await client.post("/v1/messages", json=msg, headers=READ)).status == 403
    assert (await client.get("/v1/pools", headers=PRODUCE)).status == 403
    assert (await client.patch("/v1/pools/email", json={"rate": 1}, headers=READ)).status == 403
    assert (await client.post("/v1/dlq/purge", json={"filter": {}}, headers=READ)).status == 403
    assert (await client.get("/debug/tasks", headers=OPERATE)).status == 403
    assert (await client.get("/debug/tasks", headers=ADMIN)).status == 200
    for public in ("/healthz", "/readyz", "/openapi.json", "/metrics"):
        assert (await client.get(public)).status == 200, public


async def test_generated_admin_token(aiohttp_client: Any, tmp_path: Path) -> None:
    app = create_app(settings())
    client = await aiohttp_client(app)
    from dispatcher.state import AUTH

    token = app[AUTH].generated_token
    assert token
    assert (await client.get("/v1/pools")).status == 401
    resp = await client.get("/v1/pools", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200


async def test_subscribe_receives_and_acks(client: Client) -> None:
    assert (await client.get("/v1/subscribe?tag=live.*", headers=READ)).status == 400
    assert (await client.get("/v1/subscribe", headers=READ)).status == 400
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/v1/subscribe?tag=live..x", headers=READ)
    assert info.value.status == 400
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/v1/subscribe?tag=live.*", headers=PRODUCE)
    assert info.value.status == 403
    async with client.ws_connect("/v1/subscribe?tag=live.*", headers=READ) as ws:
        resp = await client.post(
            "/v1/messages", json={"tag": "live.x", "payload": {"hi": 1}}, headers=PRODUCE
        )
        message_id = (await resp.json())["id"]
        async with asyncio.timeout(10):
            frame = await ws.receive_json()
        assert frame["id"] == message_id
        assert frame["payload"] == {"hi": 1}
        await ws.send_json({"ack": message_id})

        async def delivered() -> bool:
            view = await (await client.get(f"/v1/messages/{message_id}", headers=READ)).json()
            return bool(view["pools"]["live"]["status"] == "delivered")

        await eventually(delivered)


async def test_slow_clients_are_cut_off_without_holding_up_others(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(api_settings("memory", tmp_path, request_timeout=0.5)))
    # A body that trickles: 408 after the timeout.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer app-token\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    await writer.drain()
    # Headers that trickle: the connection is closed after the timeout.
    slow_reader, slow_writer = await asyncio.open_connection(client.host, client.port)
    slow_writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
    await slow_writer.drain()
    # Meanwhile others are served at once.
    resp = await client.post("/v1/messages", json={"tag": "user.a", "payload": 1}, headers=PRODUCE)
    assert resp.status == 202
    async with asyncio.timeout(5):
        status = await reader.readline()
        assert status.split()[1] == b"408"
        assert await slow_reader.read() == b""
    writer.close()
    slow_writer.close()
