"""GET /debug/tasks: the goroutine dump, admin only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dispatcher.app import create_app

from .factories import settings

TOKENS = [
    {"name": "ops", "token": "adm", "scopes": ["admin"]},
    {"name": "app", "token": "reader", "scopes": ["read", "operate", "produce"]},
]


@pytest.fixture
async def client(aiohttp_client: Callable[..., Any]) -> Any:
    return await aiohttp_client(
        create_app(
            settings(
                auth={"tokens": TOKENS},
                pools={
                    "email": {"concurrency": 3, "sink": {"type": "log"}},
                    "sms": {"concurrency": 2, "sink": {"type": "log"}},
                },
                routes=[{"match": "t", "pools": ["email", "sms"]}],
            )
        )
    )


async def test_json_lists_every_worker_by_name(client: Any) -> None:
    response = await client.get(
        "/debug/tasks", params={"format": "json"}, headers={"Authorization": "Bearer adm"}
    )
    assert response.status == 200
    tasks = (await response.json())["tasks"]
    names = {t["name"] for t in tasks}
    workers = {f"pool:email:worker:{i}" for i in range(3)} | {
        "pool:sms:worker:0",
        "pool:sms:worker:1",
    }
    assert workers <= names
    assert {"pool:email:feeder", "pool:email:watchdog", "acker", "housekeeping"} <= names
    worker = next(t for t in tasks if t["name"] == "pool:email:worker:0")
    assert worker["state"] == "pending"
    assert any("pool.py" in frame and "_work" in frame for frame in worker["stack"])
    assert any(t["state"] == "running" for t in tasks)  # the request asking for the dump


async def test_text_groups_identical_stacks_with_counts(client: Any) -> None:
    response = await client.get("/debug/tasks", headers={"Authorization": "Bearer adm"})
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert text.startswith("task profile: total ")
    # The five idle workers wait at the same line: one group of 5 naming each of them.
    group = next(block for block in text.split("\n\n") if "pool:email:worker:0" in block)
    assert group.startswith("5 @ pending")
    for name in ("pool:email:worker:1", "pool:email:worker:2", "pool:sms:worker:1"):
        assert name in group


async def test_refuses_a_non_admin_token(client: Any) -> None:
    response = await client.get("/debug/tasks", headers={"Authorization": "Bearer reader"})
    assert response.status == 403
    response = await client.get("/debug/tasks")
    assert response.status == 401
