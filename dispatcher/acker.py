"""The acker: batches attempt outcomes into one `Store.complete` call.

Workers hand over completions without waiting; one task writes them. While one batch is being
committed the next accumulates, so the batch size grows with the load by itself (no timer).
A completion not yet written when the process dies leaves its job CLAIMED, and the next start
requeues it: at-least-once, never lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from .errors import StoreError
from .message import Completion
from .stores.base import Store

log = logging.getLogger("dispatcher.acker")

MAX_BATCH = 2048


class Acker:
    def __init__(self, store: Store, on_applied: Callable[[Sequence[Completion]], None]) -> None:
        self._store = store
        self._on_applied = on_applied
        self._buffer: list[Completion] = []
        self._pending = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    def add(self, completion: Completion) -> None:
        self._buffer.append(completion)
        if not self._pending.is_set():
            self._pending.set()
            self._idle.clear()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="acker")

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            await self._pending.wait()
            self._pending.clear()
            while self._buffer:
                batch = self._buffer[:MAX_BATCH]
                applied = batch
                try:
                    await self._store.complete(batch)
                except StoreError:
                    self.failures += 1
                    log.exception("could not record %d outcomes; retrying", len(batch))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                except Exception:
                    # Not the store being unavailable but something in the batch it cannot
                    # take: write the rest one by one rather than block every pool on it.
                    self.failures += 1
                    log.exception("an outcome in a batch of %d was refused", len(batch))
                    applied = await self._one_by_one(batch)
                backoff = 0.1
                del self._buffer[: len(batch)]
                try:
                    self._on_applied(applied)
                except Exception:
                    log.exception("after-ack hook failed")
            if not self._buffer:
                self._idle.set()

    async def _one_by_one(self, batch: list[Completion]) -> list[Completion]:
        applied: list[Completion] = []
        for completion in batch:
            try:
                await self._store.complete([completion])
            except Exception:
                # Its job stays CLAIMED, so the next start delivers it again: at-least-once.
                log.exception(
                    "dropped the outcome of message %s in pool %s",
                    completion.job.message.id,
                    completion.job.pool,
                )
            else:
                applied.append(completion)
        return applied

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every completion handed over so far is written."""
        if not self._buffer and self._idle.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
