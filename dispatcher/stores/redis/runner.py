"""The Redis store's connection and scripts: every call goes through a Runner, which turns
Redis and socket errors into StoreError and reloads scripts a restarted server forgot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from ...errors import StoreError
from . import scripts
from .keys import Keys

ERRORS = (RedisError, OSError)


class Runner:
    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.client: Any = None
        self.open = False
        self._shas: dict[str, str] = {}

    def check(self) -> None:
        if not self.open:
            raise StoreError("the redis store is not open")

    @asynccontextmanager
    async def io(self) -> AsyncIterator[Any]:
        """The client, with every Redis or socket error turned into a StoreError (the API
        answers 503 and Retry-After; redis-py reconnects on the next command)."""
        self.check()
        try:
            yield self.client
        except ERRORS as exc:
            raise StoreError(f"redis: {exc}") from exc

    async def load_scripts(self) -> None:
        for name, source in scripts.ALL.items():
            self._shas[name] = await self.client.script_load(source)

    async def call(self, script: str, pool: str, args: Sequence[Any]) -> Any:
        """Run one script on one pool's keys."""
        return (await self.many([(script, pool, args)]))[0]

    async def many(self, calls: Sequence[tuple[str, str, Sequence[Any]]]) -> list[Any]:
        """Run scripts in one round trip (a pipeline, not a transaction: each script is
        atomic on its own). A server that lost its script cache (a restart) gets them
        loaded again and the calls that found none are run again: they did nothing."""
        async with self.io() as client:
            results: list[Any] = [None] * len(calls)
            todo = list(range(len(calls)))
            for _ in range(2):
                pipe = client.pipeline(transaction=False)
                for i in todo:
                    name, pool, args = calls[i]
                    tag, keys = self.keys.pool(pool)
                    pipe.evalsha(self._shas[name], len(keys), *keys, tag, *args)
                answers = await pipe.execute(raise_on_error=False)
                missing = []
                for i, answer in zip(todo, answers, strict=True):
                    if isinstance(answer, NoScriptError):
                        missing.append(i)
                    elif isinstance(answer, Exception):
                        raise answer
                    else:
                        results[i] = answer
                if not missing:
                    return results
                await self.load_scripts()
                todo = missing
            raise StoreError("redis: the scripts could not be loaded")

    async def pools(self) -> list[str]:
        """Every pool that ever had a job."""
        async with self.io() as client:
            names = await client.smembers(self.keys.pools)
        return sorted(n.decode() for n in names)
