"""Sink handlers for the benchmarks, in a module of their own so that the python sink imports
the same module object the benchmark reads (a script run as __main__ would be imported twice)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dispatcher.message import Message

state: dict[str, Any] = {"count": 0, "target": 0, "done": None, "starts": {}}


def reset(target: int = 0) -> None:
    state.update(count=0, target=target, done=asyncio.Event(), starts={})


async def noop(message: Message) -> None:
    state["count"] += 1
    if state["count"] == state["target"]:
        state["done"].set()


async def record_start(message: Message) -> None:
    state["starts"][message.id] = time.perf_counter()
