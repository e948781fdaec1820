"""A real Redis for tests: the machine's server on 6379 (REDIS_URL overrides), each test
under a key prefix of its own that it deletes afterwards; never FLUSHALL or FLUSHDB."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

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


class RedisServer:
    """A private redis-server on a free loopback port, its files in `directory`: for tests
    that stop, restart or reconfigure a server (the shared one is never touched that way).
    Stopped and started again on the same port and files, as after a crash (AOF replayed)."""

    def __init__(self, directory: Path, *args: str, port: int | None = None) -> None:
        self.directory = directory
        self.args = args
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        if shutil.which("redis-server") is None:
            require_service("redis-server", "apt-get install redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self.directory), "--save", "", *self.args),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._process.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: no shutdown save, as in a crash."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait(10)
            self._process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisCluster:
    """Three masters with --cluster-enabled, joined by `redis-cli --cluster create`, on
    loopback ports of their own. `url` names every node as a seed."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(
                directory / f"node{i}",
                *("--cluster-enabled", "yes", "--appendonly", "no"),
                port=free_cluster_port(),
            )
            for i in range(masters)
        ]
        self.url = "redis://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def __enter__(self) -> RedisCluster:
        if shutil.which("redis-cli") is None:
            require_service("redis-cli", "apt-get install redis-tools")
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                *("redis-cli", "--cluster", "create"),
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [self._info(n.port) for n in self.nodes]
            if all("cluster_state:ok" in s for s in states):
                return self
            time.sleep(0.1)
        raise RuntimeError("the cluster did not come up")

    @staticmethod
    def _info(port: int) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return done.stdout

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.kill()


def free_cluster_port() -> int:
    """A port free together with port + 10000, the node's cluster bus: an ephemeral port
    (32768 and up) would put the bus past 65535."""
    for _ in range(100):
        port = random.randrange(20000, 30000)
        with contextlib.ExitStack() as stack:
            try:
                for p in (port, port + 10000):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for a cluster node")
