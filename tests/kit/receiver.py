"""Test doubles that are real things: an HTTP receiver on a loopback socket that records every
request and answers as each test scripts it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web


@dataclass
class Received:
    path: str
    body: bytes
    headers: dict[str, str]
    at: float


@dataclass
class Receiver:
    """Answers POST /<name> with whatever `script(name, n)` says; records everything."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    script: Callable[[str, int], Any] | None = None
    delay: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    counts: dict[str, int] = field(default_factory=dict)  # requests so far, per path

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await request.read()
        self.requests.append(Received(name, body, dict(request.headers), time.monotonic()))
        n = self.counts[name] = self.counts.get(name, 0) + 1
        self.arrived.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            answer = self.script(name, n) if self.script else 200
            if isinstance(answer, web.StreamResponse):
                return answer
            if answer == "hang":
                await asyncio.sleep(3600)
            return web.Response(status=int(answer))
        finally:
            self.in_flight -= 1

    async def wait_for(self, count: int, timeout: float = 10.0, path: str | None = None) -> None:
        async with asyncio.timeout(timeout):
            while len(self.requests if path is None else self.on(path)) < count:
                self.arrived.clear()
                await self.arrived.wait()


R = TypeVar("R", bound=Receiver)


@asynccontextmanager
async def receiver(factory: Callable[[], R] = Receiver) -> AsyncIterator[R]:
    """A Receiver (or a subclass, via `factory`) serving on a loopback port."""
    rec = factory()
    app = web.Application()
    app.router.add_post("/{name}", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}"
    try:
        yield rec
    finally:
        await runner.cleanup()


@dataclass
class Answered:
    at: float  # monotonic, on arrival
    status: int
    took: float  # seconds to the answer


@dataclass
class Capacity(Receiver):
    """A receiver that takes `capacity` requests at once, each for `delay` seconds, and
    answers 503 at once to any request above that; `down` answers every request 503 at once.
    Every answer is kept in `answered` (with its arrival time) as it is given."""

    capacity: int = 1_000_000
    down: bool = False
    answered: list[Answered] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        started = time.monotonic()
        self.arrived.set()
        if self.down or self.in_flight >= self.capacity:
            self.answered.append(Answered(started, 503, 0.0))
            return web.Response(status=503)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        self.answered.append(Answered(started, 200, time.monotonic() - started))
        return web.Response(status=200)

    def since(self, start: float) -> list[Answered]:
        return [a for a in self.answered if a.at >= start]
