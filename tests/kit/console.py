"""Shared by the console tests: settings with tokens of every role, login, CSRF scraping,
and a way to fill the DLQ through real failed deliveries."""

from __future__ import annotations

import re
from typing import Any

from dispatcher import Dispatcher, Publish, Settings
from dispatcher.message import DlqFilter
from tests.factories import webhook_settings
from tests.kit.run import eventually

TOKENS = [
    {"name": "alice", "token": "operate-token", "scopes": ["read", "operate"]},
    {"name": "bob", "token": "read-token", "scopes": ["read"]},
    {"name": "root", "token": "admin-token", "scopes": ["admin"]},
    {"name": "app", "token": "produce-token", "scopes": ["produce"]},
]
OPERATE, READ, ADMIN, PRODUCE = (t["token"] for t in TOKENS)

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def console_settings(url: str, **extra: Any) -> Settings:
    """Two webhook pools on the loopback receiver; `email` dead-letters at the first failure."""
    return webhook_settings(
        url,
        {
            "email": {"retry": {"max_attempts": 1}, "concurrency": 4},
            "sms": {"rate": 50, "burst": 10, "retry": {"max_attempts": 1}},
        },
        [{"match": "user.>", "pools": ["email"]}, {"match": "sms.>", "pools": ["sms"]}],
        auth={"tokens": TOKENS},
        **extra,
    )


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no csrf_token field on the page"
    return match[1]


async def dead_letters(
    dispatcher: Dispatcher, items: list[tuple[str, bytes]], pool: str = "email"
) -> list[str]:
    """Publish `items` (tag, payload) while the receiver answers 400, and wait until they
    are all in the DLQ. Returns their ids."""
    before = await dispatcher.dlq_count(DlqFilter(pool=pool))
    accepted = await dispatcher.publish([Publish(tag=t, payload=p) for t, p in items])

    async def arrived() -> bool:
        return await dispatcher.dlq_count(DlqFilter(pool=pool)) >= before + len(items)

    await eventually(arrived)
    return [a.id for a in accepted]
