"""Bearer tokens with scopes: produce, read, operate, admin.

Tokens are kept only as SHA-256 digests; a request's token is hashed and looked up, and the
digest compared in constant time, so neither the table nor timing reveals a token. With no
tokens configured a random admin token is generated at start and printed once (as Jupyter
does); `auth.disabled` (loopback binds only, checked by the config) turns checks off.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TypeVar

from .config import AuthConfig, Scope, token_value


def scope_allows(scopes: Collection[str], scope: str) -> bool:
    """The one scope rule, for API tokens and console sessions alike: admin implies every
    scope; the others imply nothing but themselves."""
    return scope in scopes or "admin" in scopes


class Principal:
    __slots__ = ("name", "scopes")

    def __init__(self, name: str, scopes: Iterable[str]) -> None:
        self.name = name
        self.scopes = frozenset(scopes)

    def allows(self, scope: str) -> bool:
        return scope_allows(self.scopes, scope)


ANONYMOUS = Principal("anonymous", ("produce", "read", "operate", "admin"))


class Authenticator:
    def __init__(self, config: AuthConfig, env: Mapping[str, str]) -> None:
        self.disabled = config.disabled
        self.generated_token: str | None = None
        self._by_digest: dict[bytes, Principal] = {}
        for token in config.tokens:
            self._add(token_value(token, env), token.name, token.scopes)
        if not config.tokens and not config.disabled:
            self.generated_token = secrets.token_urlsafe(24)
            self._add(self.generated_token, "admin", ("produce", "read", "operate", "admin"))

    def _add(self, token: str, name: str, scopes: Iterable[str]) -> None:
        self._by_digest[_digest(token)] = Principal(name, scopes)

    def authenticate(self, token: str | None) -> Principal | None:
        if self.disabled:
            return ANONYMOUS
        if not token:
            return None
        digest = _digest(token)
        found = None
        # Compare against every digest, without stopping early: the time taken says nothing
        # about which token (if any) matched. There are a handful of tokens, not thousands.
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                found = principal
        return found

    def from_header(self, value: str | None) -> Principal | None:
        if value is None:
            return self.authenticate(None)
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer":
            return self.authenticate(None)
        return self.authenticate(token.strip())


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


F = TypeVar("F", bound=Callable[..., object])


def requires(scope: Scope | None) -> Callable[[F], F]:
    """Mark a handler with the scope it needs (None: public). Read by the auth middleware.
    The API's route table marks its handlers; a handler marked twice is marked alike."""

    def mark(handler: F) -> F:
        marked = getattr(handler, "__scope__", scope)
        if marked != scope:
            raise ValueError(f"{handler!r} is marked {marked!r}, not {scope!r}")
        handler.__scope__ = scope  # type: ignore[attr-defined]
        return handler

    return mark
