"""Connecting to Redis, and what the server's persistence settings promise."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ResponseError

_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 5}


async def connect(url: str) -> Any:
    """A client for `url`: redis:// or rediss:// (TLS) of one server, or of a Redis Cluster:
    one node (found to be in cluster mode) or several seed nodes, `redis://h1:6379,h2:6379`.
    redis-py reconnects by itself after a lost connection (and follows a cluster's slots);
    a command that fails meanwhile raises, and the store answers that with a StoreError,
    never with a silent retry of a write."""
    parts = urlsplit(url)
    if "," in parts.netloc:
        auth, _, hosts = parts.netloc.rpartition("@")
        seeds = [_node(h) for h in hosts.split(",")]
        first = urlunsplit(
            parts._replace(netloc=(auth + "@" if auth else "") + hosts.split(",")[0])
        )
        return await _cluster(first, seeds)
    client = aioredis.from_url(url, health_check_interval=5, **_OPTIONS)
    try:
        info = await client.info("cluster")
    except BaseException:
        await client.aclose()
        raise
    if not info.get("cluster_enabled"):
        return client
    await client.aclose()
    return await _cluster(url, None)


async def _cluster(url: str, seeds: list[ClusterNode] | None) -> RedisCluster:
    # A cluster has one database: the URL's /0 means nothing there.
    url = urlunsplit(urlsplit(url)._replace(path=""))
    if seeds is None:
        client = RedisCluster.from_url(url, **_OPTIONS)
    else:
        client = RedisCluster.from_url(url, startup_nodes=seeds, **_OPTIONS)
    await client.initialize()
    return client


def _node(hostport: str) -> ClusterNode:
    host, _, port = hostport.rpartition(":")
    return ClusterNode(host or hostport, int(port) if port else 6379)


async def durability(client: Any) -> tuple[bool, str]:
    """(True, "") when an acknowledged write is on disk before its reply: the append-only
    file with an fsync per write. Otherwise (False, why)."""
    try:
        if isinstance(client, RedisCluster):
            nodes = client.get_primaries()
            configs = [await client.config_get("append*", target_nodes=n) for n in nodes]
        else:
            configs = [await client.config_get("append*")]
    except ResponseError:  # CONFIG renamed or disabled, as on managed services
        return False, "the server's persistence settings cannot be read (CONFIG GET refused)"
    for config in configs:
        durable, why = _durable(config)
        if not durable:
            return durable, why
    return True, ""


def _durable(config: dict[Any, Any]) -> tuple[bool, str]:
    appendonly = config.get(b"appendonly", config.get("appendonly"))
    fsync = config.get(b"appendfsync", config.get("appendfsync"))
    if appendonly not in (b"yes", "yes"):
        return False, "appendonly is off (set appendonly yes, appendfsync always)"
    if fsync not in (b"always", "always"):
        return False, f"appendfsync is {fsync!r} (up to a second of writes can be lost; use always)"
    return True, ""
