"""The grammar of tags and route patterns: the one place that says what a valid tag is.

Tags are dot-separated tokens of ``[A-Za-z0-9_:-]``, at most 255 characters. A route pattern
is a tag in which a token may be ``*`` (exactly one token) or, last, ``>`` (one or more
trailing tokens). The config, ingest, the DLQ filter and WebSocket subscriptions all check
against these; `routing.Router` matches them.
"""

from __future__ import annotations

import re

MAX_TAG_LENGTH = 255
_TOKEN = r"[A-Za-z0-9_:-]+"
TAG = re.compile(rf"^{_TOKEN}(?:\.{_TOKEN})*$")
_PATTERN_TOKEN = re.compile(rf"^(?:{_TOKEN}|\*|>)$")


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
