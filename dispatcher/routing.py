"""Routing: which pools a tag goes to.

Tags are dot-separated tokens of ``[A-Za-z0-9_:-]``. A route pattern is a tag in which a token
may be ``*`` (exactly one token) or, last, ``>`` (one or more trailing tokens), as in NATS
subjects. A message goes to every pool whose route matches (fan-out), each pool once, in the
order the routes name them.

Exact patterns sit in a dict; wildcard results are memoised per tag in a bounded cache, so a
match costs one dict lookup after the first message with that tag.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_TAG_LENGTH = 255
_TOKEN = r"[A-Za-z0-9_:-]+"
TAG = re.compile(rf"^{_TOKEN}(?:\.{_TOKEN})*$")
_PATTERN_TOKEN = re.compile(rf"^(?:{_TOKEN}|\*|>)$")
_CACHE_SIZE = 10_000


def is_valid_tag(tag: str) -> bool:
    return len(tag) <= MAX_TAG_LENGTH and TAG.match(tag) is not None


def validate_pattern(pattern: str) -> None:
    """Raise ValueError saying what is wrong with a route pattern."""
    if not pattern or len(pattern) > MAX_TAG_LENGTH:
        raise ValueError("a pattern is 1 to 255 characters")
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if not _PATTERN_TOKEN.match(token):
            raise ValueError(f"bad token {token!r}: use [A-Za-z0-9_:-], '*' or a final '>'")
        if token == ">" and i != len(tokens) - 1:
            raise ValueError("'>' may only be the last token")


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
