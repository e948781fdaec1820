"""The console's pure parts: fingerprints, sparklines, sessions, login throttling, form
parsing and formatting. Clocks are passed in; nothing sleeps."""

from __future__ import annotations

import pytest

from console.dlq import parse_filter, trace_url, validate_json
from console.fingerprint import fingerprint, group_entries
from console.fmt import age, payload_text, rate
from console.pools import parse_throttle
from console.sampler import sparkline
from console.sessions import IDLE_TIMEOUT, LoginLimiter, Sessions
from dispatcher.auth import Principal
from dispatcher.message import DeadReason, DlqEntry

from .factories import message


def entry(error: str | None, pool: str = "email", at: float = 1.0) -> DlqEntry:
    return DlqEntry(message("m", tag="t", created=0.0), pool, 1, error, at, DeadReason.MAX_ATTEMPTS)


def test_fingerprints_hide_what_varies_and_keep_status_codes() -> None:
    assert fingerprint("timeout after 10.0 s to 10.0.0.7:443") == fingerprint(
        "timeout after 12.5 s to 10.0.0.9:8443"
    )
    assert fingerprint("HTTP 500: oops") != fingerprint("HTTP 503: oops")
    assert fingerprint("user 01a200d8792e9fea1a810079a0 unknown") == fingerprint(
        "user 01a200d8792e9fea1a810079ff unknown"
    )
    assert fingerprint(None) == "(no error recorded)"


def test_groups_count_and_name_a_usable_filter() -> None:
    groups = group_entries(
        [
            entry("connect to 10.0.0.1:80 refused", "a", 3.0),
            entry("connect to 10.0.0.2:80 refused", "b", 5.0),
            entry("HTTP 400: bad", "a"),
        ]
    )
    assert [(g.count, sorted(g.pools), g.last_failed_at) for g in groups] == [
        (2, ["a", "b"], 5.0),
        (1, ["a"], 1.0),
    ]
    assert groups[0].filter == "connect to"  # a substring of every member's error
    assert "refused" in (groups[0].example or "")


def test_sparkline_scales_into_its_box() -> None:
    assert sparkline([]) == ""
    assert sparkline([0.0, 10.0], width=100, height=20) == "M0.0,19.0 L100.0,1.0"
    assert sparkline([5.0], width=10, height=10).startswith("M0,")
    flat = sparkline([0.0, 0.0, 0.0], width=10, height=10)
    assert flat == "M0.0,9.0 L5.0,9.0 L10.0,9.0"


@pytest.mark.parametrize("scopes", [[], ["read"], ["read", "operate"], ["admin"], ["produce"]])
def test_a_session_and_its_token_allow_the_same(scopes: list[str]) -> None:
    session, principal = Sessions().create("alice", scopes), Principal("alice", scopes)
    for scope in ("produce", "read", "operate", "admin"):
        assert session.allows(scope) == principal.allows(scope), scope
    assert session.allows("operate") == ("operate" in scopes or "admin" in scopes)


def test_sessions_rotate_expire_and_check_csrf() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0])
    first = sessions.create("alice", ["read"])
    second = sessions.create("alice", ["read"], replaces=first.id)
    assert sessions.get(first.id) is None
    assert sessions.get(second.id) is second
    assert second.csrf_ok(second.csrf)
    assert not second.csrf_ok(first.csrf)
    assert not second.csrf_ok(None)
    assert not second.allows("operate")
    now[0] += IDLE_TIMEOUT + 1
    assert sessions.get(second.id) is None
    assert len(sessions) == 0


def test_login_limiter_locks_out_one_client_for_a_window() -> None:
    now = [0.0]
    limiter = LoginLimiter(failures=3, window=60.0, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("1.2.3.4") == 0
        limiter.failed("1.2.3.4")
    assert limiter.retry_after("1.2.3.4") == 60.0
    assert limiter.retry_after("5.6.7.8") == 0
    now[0] = 61.0
    assert limiter.retry_after("1.2.3.4") == 0


def test_throttle_form_parsing() -> None:
    assert parse_throttle({"rate": "", "burst": "", "concurrency": "4"}) == {
        "rate": None,
        "concurrency": 4,
    }
    assert parse_throttle({"rate": "2.5", "burst": "5"}) == {"rate": 2.5, "burst": 5}
    for bad in ({"rate": "0"}, {"rate": "inf"}, {"burst": "2.5"}, {"concurrency": "x"}, {}):
        with pytest.raises(ValueError, match=r"must be|nothing"):
            parse_throttle(bad)


def test_edited_payloads_must_be_strict_json() -> None:
    assert validate_json(' {"a": [1, 2]} ', 100) == b'{"a": [1, 2]}'
    for bad in ('{"a": 1, "a": 2}', "[NaN]", "{", "", "[" * 5000 + "]" * 5000):
        with pytest.raises(ValueError, match="JSON"):
            validate_json(bad, 1_000_000)
    with pytest.raises(ValueError, match="larger"):
        validate_json('"' + "x" * 200 + '"', 100)


def test_filters_ignore_unknown_pools_and_bad_times() -> None:
    f = parse_filter({"pool": "nope", "tag": " t ", "since": "nan"}, ["email"])
    assert (f.pool, f.tag, f.since) == (None, "t", None)
    assert parse_filter({"window": "1h"}, []).since is not None


def test_trace_links_only_for_http_templates_and_valid_traceparents() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert trace_url("https://t/{trace_id}", tp) == "https://t/0af7651916cd43dd8448eb211c80319c"
    assert trace_url("javascript:alert({trace_id})", tp) is None
    assert trace_url("https://t/{trace_id}", "garbage") is None
    assert trace_url(None, tp) is None


def test_formatting() -> None:
    assert payload_text(b'{"a":1}') == ('{\n  "a": 1\n}', False)
    assert payload_text(b"\xff<b>") == ("\ufffd<b>", False)
    assert payload_text(b"x" * 10, limit=4) == ("xxxx", True)
    assert [age(0.5), age(42), age(125), age(7200)] == ["500 ms", "42 s", "2 m 5 s", "2 h 0 m"]
    assert [rate(None), rate(0.05), rate(2.5)] == ["unlimited", "3.0/min", "2.5/s"]
