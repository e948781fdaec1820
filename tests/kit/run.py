"""Running things in a test: a Dispatcher started and stopped around a block, and polling
until what a test waits for has happened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from dispatcher.dispatcher import Dispatcher


@asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncIterator[Dispatcher]:
    await dispatcher.start()
    try:
        yield dispatcher
    finally:
        await dispatcher.stop(grace=1.0)


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll an async-or-sync check until it returns truthy."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.02)
