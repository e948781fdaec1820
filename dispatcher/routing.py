"""Routing: which pools a tag goes to.

Patterns are those of `tags.py`, as in NATS subjects (``*`` one token, a final ``>`` one or
more). A message goes to every pool whose route matches (fan-out), each pool once, in the
order the routes name them.

Exact patterns sit in a dict; wildcard results are memoised per tag in a bounded cache, so a
match costs one dict lookup after the first message with that tag.
"""

from __future__ import annotations

from collections.abc import Iterable

from .tags import validate_pattern

_CACHE_SIZE = 10_000


def _matches(pattern: tuple[str, ...], tokens: list[str]) -> bool:
    if pattern[-1] == ">":
        if len(tokens) < len(pattern):
            return False
        head = pattern[:-1]
    else:
        if len(tokens) != len(pattern):
            return False
        head = pattern
    return all(p == "*" or p == t for p, t in zip(head, tokens, strict=False))


class Router:
    """Compiled routes. `route(tag)` answers the pools, an empty tuple when none match."""

    def __init__(self, routes: Iterable[tuple[str, Iterable[str]]]) -> None:
        self._routes: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        for pattern, pools in routes:
            validate_pattern(pattern)
            self._routes.append((tuple(pattern.split(".")), tuple(pools)))
        self._wildcard = any("*" in pattern or ">" in pattern for pattern, _ in self._routes)
        self._exact: dict[str, tuple[str, ...]] = {}
        if not self._wildcard:
            # With no wildcards every answer is known now; unknown tags get ().
            for tokens, _ in self._routes:
                tag = ".".join(tokens)
                self._exact[tag] = self._compute(tag)
        self._cache: dict[str, tuple[str, ...]] = {}

    def route(self, tag: str) -> tuple[str, ...]:
        if not self._wildcard:
            return self._exact.get(tag, ())
        pools = self._cache.get(tag)
        if pools is None:
            pools = self._compute(tag)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()  # cheap and bounded; hot tags come straight back
            self._cache[tag] = pools
        return pools

    def _compute(self, tag: str) -> tuple[str, ...]:
        tokens = tag.split(".")
        found: dict[str, None] = {}
        for pattern, pools in self._routes:
            if _matches(pattern, tokens):
                found.update(dict.fromkeys(pools))
        return tuple(found)
