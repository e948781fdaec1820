"""Console sessions and login throttling, both in memory.

A session is created only by a successful login with an API token: it remembers who logged
in and with which scopes, never the token itself. Its id is a random 256-bit value sent as
an HttpOnly, SameSite=Strict cookie; every login makes a new id (no fixation), logout
forgets it. Each session has its own CSRF token for the hidden `csrf_token` form field.

On a store of one process, sessions live in this process and die with it. On a store shared
by several (redis), the Dispatcher offers a place for them (`Dispatcher.shared_sessions`):
a login through one instance then works on every instance behind a load balancer, and a
logout through one ends the session on all. Flash messages stay with the instance that made
them (they are shown on the next page, which the same browser almost always asks of it).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from dispatcher.auth import scope_allows

IDLE_TIMEOUT = 8 * 3600.0  # seconds without a request before a session ends
MAX_AGE = 24 * 3600.0  # seconds after login a session ends regardless
MAX_SESSIONS = 10_000  # the oldest are dropped beyond this, so memory stays bounded


@dataclass
class Session:
    id: str
    user: str
    scopes: frozenset[str]
    csrf: str
    created: float
    seen: float
    flashes: list[tuple[str, str]] = field(default_factory=list)  # (kind, text)

    def allows(self, scope: str) -> bool:
        return scope_allows(self.scopes, scope)

    @property
    def role(self) -> str:
        for role in ("admin", "operate", "read"):
            if role in self.scopes:
                return role
        return "none"

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())

    def flash(self, text: str, kind: str = "ok") -> None:
        self.flashes.append((kind, text))

    def take_flashes(self) -> list[tuple[str, str]]:
        out, self.flashes = self.flashes, []
        return out


class SharedSessions(Protocol):
    """Where sessions live when several processes serve the console (the store)."""

    async def load_session(self, session_id: str) -> bytes | None: ...
    async def save_session(self, session_id: str, data: bytes, ttl: float) -> None: ...
    async def drop_session(self, session_id: str) -> None: ...


class _Saved(msgspec.Struct, frozen=True):
    """A session as another process reads it: who, with which scopes, its CSRF token."""

    user: str
    scopes: list[str]
    csrf: str


class Sessions:
    def __init__(
        self, clock: Callable[[], float] = time.monotonic, shared: SharedSessions | None = None
    ) -> None:
        self._clock = clock
        self._by_id: OrderedDict[str, Session] = OrderedDict()
        self.shared = shared

    # --- what requests use: the shared place first, when there is one ----------------------
    async def open(self, user: str, scopes: Iterable[str], replaces: str | None = None) -> Session:
        session = self.create(user, scopes, replaces)
        if self.shared is not None:
            if replaces:
                await self.shared.drop_session(replaces)
            saved = _Saved(session.user, sorted(session.scopes), session.csrf)
            await self.shared.save_session(session.id, msgspec.json.encode(saved), MAX_AGE)
        return session

    async def find(self, session_id: str | None) -> Session | None:
        """The live session of a request's cookie. With a shared place, a session must be
        there too (a logout through any instance ends it), and one made by another instance
        is adopted here (its age restarts, bounded by the shared entry's expiry)."""
        if not session_id or self.shared is None:
            return self.get(session_id)
        data = await self.shared.load_session(session_id)
        if data is None:
            self._by_id.pop(session_id, None)
            return None
        session = self.get(session_id)
        if session is None:
            saved = msgspec.json.decode(data, type=_Saved)
            now = self._clock()
            session = Session(session_id, saved.user, frozenset(saved.scopes), saved.csrf, now, now)
            self._keep(session)
        return session

    async def close(self, session_id: str | None) -> None:
        self.drop(session_id)
        if session_id and self.shared is not None:
            await self.shared.drop_session(session_id)

    # --- this process's sessions ---------------------------------------------------------

    def create(self, user: str, scopes: Iterable[str], replaces: str | None = None) -> Session:
        if replaces is not None:
            self._by_id.pop(replaces, None)
        now = self._clock()
        session = Session(
            id=secrets.token_urlsafe(32),
            user=user,
            scopes=frozenset(scopes),
            csrf=secrets.token_urlsafe(32),
            created=now,
            seen=now,
        )
        self._keep(session)
        return session

    def _keep(self, session: Session) -> None:
        self._by_id[session.id] = session
        while len(self._by_id) > MAX_SESSIONS:
            self._by_id.popitem(last=False)

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen > IDLE_TIMEOUT or now - session.created > MAX_AGE:
            del self._by_id[session_id]
            return None
        session.seen = now
        self._by_id.move_to_end(session_id)
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._by_id)


class LoginLimiter:
    """At most `failures` failed logins per `window` seconds from one client address; a
    locked-out client is refused before its token is even looked at."""

    def __init__(
        self,
        failures: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.failures = failures
        self.window = window
        self._clock = clock
        self._max_clients = max_clients
        self._by_client: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again; 0 when it may try now."""
        recent = self._recent(client)
        if recent is None or len(recent) < self.failures:
            return 0.0
        return max(0.0, recent[0] + self.window - self._clock())

    def failed(self, client: str) -> None:
        recent = self._recent(client)
        if recent is None:
            recent = self._by_client[client] = deque(maxlen=self.failures)
        recent.append(self._clock())
        self._by_client.move_to_end(client)
        while len(self._by_client) > self._max_clients:
            self._by_client.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._by_client.pop(client, None)

    def _recent(self, client: str) -> deque[float] | None:
        recent = self._by_client.get(client)
        if recent is None:
            return None
        cutoff = self._clock() - self.window
        while recent and recent[0] <= cutoff:
            recent.popleft()
        return recent
