"""A real Redis for tests: the machine's server on 6379 (REDIS_URL overrides), each test
under a key prefix of its own that it deletes afterwards; never FLUSHALL or FLUSHDB."""

from __future__ import annotations

import os
import uuid

import redis.asyncio as aioredis

from tests.conftest import require_service

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def require_redis(url: str = URL) -> None:
    client = aioredis.from_url(url, socket_connect_timeout=1)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        require_service("redis", f"{url}: {exc} (.ci/run starts redis-server)")
    finally:
        await client.aclose()


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def drop_prefix(prefix: str, url: str = URL) -> int:
    """Delete every key of a store prefix: `{prefix}:...` and `{prefix:<pool>}:...`."""
    client = aioredis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match="{" + prefix + "[}:]*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
        return len(keys)
    finally:
        await client.aclose()
