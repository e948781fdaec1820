"""Connecting to Redis, and what the server's persistence settings promise."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError


async def connect(url: str) -> Any:
    """A client for `url`: redis://, rediss:// (TLS) or unix://. redis-py reconnects by
    itself after a lost connection; a command that fails meanwhile raises, and the store
    answers that with a StoreError, never with a silent retry of a write."""
    client = aioredis.from_url(url, health_check_interval=5, socket_connect_timeout=5)
    await client.ping()
    return client


async def durability(client: Any) -> tuple[bool, str]:
    """(True, "") when an acknowledged write is on disk before its reply: the append-only
    file with an fsync per write. Otherwise (False, why)."""
    try:
        config = await client.config_get("append*")
    except ResponseError:  # CONFIG renamed or disabled, as on managed services
        return False, "the server's persistence settings cannot be read (CONFIG GET refused)"
    appendonly = config.get(b"appendonly", config.get("appendonly"))
    fsync = config.get(b"appendfsync", config.get("appendfsync"))
    if appendonly not in (b"yes", "yes"):
        return False, "appendonly is off (set appendonly yes, appendfsync always)"
    if fsync not in (b"always", "always"):
        return False, f"appendfsync is {fsync!r} (up to a second of writes can be lost; use always)"
    return True, ""
