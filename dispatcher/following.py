"""Following the pool settings that other processes set, when the store is shared.

With the redis store several processes run the same pools, and an operator's pause,
resume or throttle goes through one of them, which saves it in the store. Every other
process reads the saved overrides twice a second and adopts what changed, so a change made
through any instance holds for all within a second; the same tick refreshes the backlog
counts that `max_backlog` is checked against with what the other processes enqueued. A
failed read is logged and retried on the next tick; the pools keep their last settings
meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from .background import Background
from .errors import StoreError
from .stores.base import Store

log = logging.getLogger("dispatcher")

INTERVAL = 0.5  # seconds between reads of the shared overrides

Adopt = Callable[[Mapping[str, Mapping[str, object]]], Awaitable[None]]


class SettingsFollower:
    def __init__(self, store: Store, adopt: Adopt) -> None:
        self._store = store
        self._adopt = adopt
        self._task = Background("pool-settings-follower", self._run)

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(INTERVAL)
            try:
                await self._adopt(await self._store.load_pool_settings())
            except StoreError as exc:
                if not failing:
                    log.warning("cannot read the shared pool settings: %s", exc)
                failing = True
            else:
                failing = False
