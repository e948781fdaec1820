"""strictjson's cheap tests against what they stand for: long digit runs only outside
strings, and duplicate keys however a ':' in them is spelt."""

from __future__ import annotations

import pytest

from dispatcher import strictjson
from dispatcher.strictjson import MAX_DIGITS, JsonError

FINE = [
    b'["' + b"7" * (MAX_DIGITS + 10) + b'"]',  # digits in a string
    b"[0." + b"1" * MAX_DIGITS + b"]",  # exactly the limit
    b'[{"a": 1, "b": 2}, {"a": 1, "b": 2}]' + b" " * MAX_DIGITS,  # long, no run at all
    b'{"a\\u003ab": 1, "a:c": 2}',  # an escaped ':' in one key
    b'{"a\\\\U003a": 1, "a": 2}',  # a backslash and 'U003a', not an escape
]
REFUSED = [
    (b"[0." + b"1" * (MAX_DIGITS + 1) + b"]", "digits"),
    (b'["x", 1.' + b"0" * (MAX_DIGITS + 1) + b', "y"]', "digits"),
    (b'{"a\\u003a": 1, "a:": 2}', "duplicate key 'a:'"),
    (b'{"a\\u003A": 1, "a:": 2}', "duplicate key 'a:'"),
    (b'[{"k": 1, "k": 2}]', "duplicate key 'k'"),
]


@pytest.mark.parametrize("body", FINE)
def test_strict_json_passes(body: bytes) -> None:
    strictjson.check(body)


@pytest.mark.parametrize(("body", "why"), REFUSED)
def test_strict_json_refuses(body: bytes, why: str) -> None:
    with pytest.raises(JsonError, match=why):
        strictjson.check(body)


def test_a_payload_alone_gets_the_rule_of_a_payload_in_a_message() -> None:
    strictjson.check_payload(b"[" * 63 + b"]" * 63)  # 64 levels inside {"payload": ...}
    with pytest.raises(JsonError, match="nesting deeper than 64"):
        strictjson.check_payload(b"[" * 64 + b"]" * 64)
    for body, why in REFUSED:
        with pytest.raises(JsonError, match=why):
            strictjson.check_payload(body)
