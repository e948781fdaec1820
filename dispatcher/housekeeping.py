"""Housekeeping: one background task that watches free disk space and expires old data.

Every second it measures the free space where the store writes (a store that writes nowhere,
memory, has no `data_dir` and skips it) and flags it as low under `store.min_free_bytes`;
the Dispatcher refuses ingest meanwhile, rather than let the store fail mid-write. Every
minute it asks the store to drop delivered messages older than `store.retention` and
producer ids whose dedup window has ended. A failure of either is logged and retried on the
next tick: housekeeping never stops while the Dispatcher runs.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable

from .background import Background
from .config import StoreConfig
from .errors import StoreError
from .stores.base import Store

log = logging.getLogger("dispatcher")

_INTERVAL = 1.0  # seconds between disk-space checks
_EXPIRE_EVERY = 60  # expiry runs every this many checks


class Housekeeper:
    def __init__(self, store: Store, config: StoreConfig, clock: Callable[[], float]) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._task = Background("housekeeping", self._run)
        self.disk_low = False

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        ticks = 0
        data_dir = self._store.data_dir
        while True:
            if data_dir is not None:
                await self._check_disk(data_dir)
            if ticks % _EXPIRE_EVERY == 0:
                await self._expire()
            ticks += 1
            await asyncio.sleep(_INTERVAL)

    async def _check_disk(self, data_dir: str) -> None:
        try:
            free = (await asyncio.to_thread(shutil.disk_usage, data_dir)).free
        except OSError:
            return
        low = free < self._config.min_free_bytes
        if low != self.disk_low:
            log.warning("free disk %s: %d bytes", "low" if low else "ok", free)
        self.disk_low = low

    async def _expire(self) -> None:
        try:
            now = self._clock()
            # Delivered messages stay `retention` seconds; ids, until their window ends.
            await self._store.expire(now - self._config.retention, ids_before=now)
        except StoreError:
            log.exception("expiring delivered messages failed")
