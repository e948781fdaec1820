"""What all sinks of one process share: the HTTP client session and the WebSocket hub.

One `aiohttp.ClientSession` per process keeps connections alive across deliveries and pools.
It is created lazily inside the running loop (no loop is captured at construction) and its
connector resolves names through `GuardedResolver`, which applies the SSRF guard to every
address a name resolves to, at connect time, so DNS rebinding cannot reach a private address.
IP literals never reach a resolver; the webhook sink checks those itself.
"""

from __future__ import annotations

import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from ..config import SecurityConfig
from ..ssrf import AddressGuard, AddressRefused
from .websocket import SubscriberHub

#: seconds to open a TCP connection; the attempt as a whole is bounded by the pool's timeout
CONNECT_TIMEOUT = 30.0


class GuardedResolver(AbstractResolver):
    """Drops the addresses the guard refuses; refuses the name if none is left."""

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        # getaddrinfo in the loop's executor: honours /etc/hosts and never blocks the loop.
        self._inner = inner if inner is not None else ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._guard.allows(r["host"])]
        if not allowed:
            raise AddressRefused(host, sorted({r["host"] for r in results}))
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class SinkContext:
    """Resources shared by every sink of a process. Close it once, after the sinks."""

    def __init__(
        self,
        security: SecurityConfig,
        *,
        user_agent: str = "dispatcher/0.1",
        connection_limit: int = 1000,
    ) -> None:
        self.guard = AddressGuard(security.webhook_allow_private, security.webhook_allow_cidrs)
        self.hub = SubscriberHub()
        self._user_agent = user_agent
        self._connection_limit = connection_limit
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def session(self) -> aiohttp.ClientSession:
        """The process's HTTP session, created on first use (call it inside the loop)."""
        if self._session is None:
            if self._closed:
                raise RuntimeError("SinkContext is closed")
            connector = aiohttp.TCPConnector(
                # Bounded so a flood of slow targets cannot exhaust file descriptors; the
                # pools' concurrency limits are the real bound.
                limit=self._connection_limit,
                limit_per_host=0,
                resolver=GuardedResolver(self.guard),
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # No total: the pool cancels an attempt at its own timeout.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
                headers={"User-Agent": self._user_agent},
                raise_for_status=False,
                trust_env=False,  # no proxy from the environment: it would bypass the guard
            )
        return self._session

    async def close(self) -> None:
        self._closed = True
        await self.hub.close()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
