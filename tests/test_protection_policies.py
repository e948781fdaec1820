"""The receiver-protection policies are pure: the circuit breaker, the Retry-After hold and
the adaptive concurrency limit, driven with a clock passed in (no sleeps)."""

from __future__ import annotations

import math

import pytest

from dispatcher.adaptive import DECREASE, AdaptiveLimit
from dispatcher.circuit import PASS, REFUSED, Breaker, CircuitState
from dispatcher.config import CircuitConfig
from dispatcher.hold import Hold

CLOSED, HALF_OPEN, OPEN = CircuitState.CLOSED, CircuitState.HALF_OPEN, CircuitState.OPEN
CONFIG = CircuitConfig(
    enabled=True,
    window=10.0,
    min_attempts=4,
    failure_ratio=0.5,
    cooldown=5.0,
    max_cooldown=12.0,
    probes=2,
)


def breaker(config: CircuitConfig = CONFIG) -> tuple[Breaker, list[tuple[CircuitState, str]]]:
    moves: list[tuple[CircuitState, str]] = []
    return Breaker(config, lambda state, reason: moves.append((state, reason))), moves


def attempt(b: Breaker, now: float, failed: bool) -> int:
    ticket = b.admit(now)
    if ticket != REFUSED:
        b.record(now, failed, ticket)
    return ticket


# --- the circuit breaker ------------------------------------------------------------------


def test_it_opens_once_the_window_holds_enough_failed_attempts() -> None:
    b, moves = breaker()
    for t in range(3):
        assert attempt(b, t, failed=True) == PASS  # 3 of 3 failed, but min_attempts is 4
    assert b.state is CLOSED
    assert attempt(b, 3.0, failed=False) == PASS  # 4 attempts, 3 failed: 75% >= 50%
    assert b.state is CLOSED  # a success never opens it
    attempt(b, 3.5, failed=True)
    assert b.state is OPEN
    assert b.opened == 1
    assert moves == [(OPEN, "4 of the last 5 attempts failed (within 10s)")]
    assert b.wait(3.5) == 5.0
    assert b.admit(8.4) == REFUSED  # nothing goes through during the cooldown


def test_failures_older_than_the_window_no_longer_count() -> None:
    b, _ = breaker()
    for t in (0.0, 1.0, 2.0):
        attempt(b, t, failed=True)
    # 11 s later the first three are out of the window: 1 failure of 1 attempt.
    for t in (13.0, 13.1, 13.2):
        attempt(b, t, failed=False)
    attempt(b, 13.3, failed=True)
    assert b.state is CLOSED  # 1 of 4 in the window
    attempt(b, 13.4, failed=True)
    assert b.state is CLOSED  # 2 of 5
    attempt(b, 13.5, failed=True)
    assert b.state is OPEN  # 3 of 6


def test_a_window_long_idle_is_emptied_whole() -> None:
    b, _ = breaker()
    for t in (0.0, 0.1, 0.2):
        attempt(b, t, failed=True)
    attempt(b, 1000.0, failed=True)  # far later: the old failures are gone
    assert b.state is CLOSED


def test_half_open_lets_the_probes_through_and_closes_when_all_succeed() -> None:
    b, moves = breaker()
    for t in (0.0, 0.1, 0.2, 0.3):
        attempt(b, t, failed=True)
    assert b.state is OPEN
    first = b.admit(5.3)
    assert first > PASS
    assert b.state is HALF_OPEN
    second = b.admit(5.3)
    assert second == first
    assert b.admit(5.3) == REFUSED  # two probes out: the rest wait for their outcome
    assert b.wait(5.3) == 0.0
    b.record(5.4, False, first)
    assert b.state is HALF_OPEN
    b.record(5.5, False, second)
    assert b.state is CLOSED
    assert [m[0] for m in moves] == [OPEN, HALF_OPEN, CLOSED]
    assert moves[-1][1] == "2 probe(s) succeeded"
    # Closed again with an empty window: three fresh failures do not open it.
    for t in (5.6, 5.7, 5.8):
        attempt(b, t, failed=True)
    assert b.state is CLOSED


def test_a_failed_probe_opens_it_again_for_longer_capped() -> None:
    b, moves = breaker()
    for t in (0.0, 0.1, 0.2, 0.3):
        attempt(b, t, failed=True)
    now = 0.3
    cooldowns = []
    for _ in range(4):
        now += b.wait(now)
        ticket = b.admit(now)
        assert ticket > PASS
        b.record(now, True, ticket)
        assert b.state is OPEN
        cooldowns.append(b.wait(now))
    assert cooldowns == pytest.approx([7.5, 11.25, 12.0, 12.0])  # x1.5, capped at max_cooldown
    assert b.opened == 5
    assert moves[-1] == (OPEN, "a probe failed")
    # Recovery: the probes succeed, and the next opening starts from the configured cooldown.
    now += b.wait(now)
    for ticket in (b.admit(now), b.admit(now)):
        b.record(now, False, ticket)
    assert b.state is CLOSED
    for t in range(4):
        attempt(b, now + 0.1 * t, failed=True)
    assert b.wait(now + 0.3) == pytest.approx(5.0)


def test_outcomes_from_the_past_change_nothing() -> None:
    b, _ = breaker()
    for t in (0.0, 0.1, 0.2, 0.3):
        attempt(b, t, failed=True)
    # Attempts let through before it opened end while it is open: ignored.
    b.record(1.0, False, PASS)
    b.record(1.0, True, PASS)
    assert b.state is OPEN
    assert b.wait(1.0) == pytest.approx(4.3)
    old = b.admit(5.3)  # half-open; a probe that will outlive its period
    b.record(5.4, True, b.admit(5.3))  # the other probe fails: open again
    b.record(20.0, False, b.admit(20.0))  # a new period's probe
    assert b.state is HALF_OPEN
    b.record(20.1, False, old)  # the old period's probe: not one of this period's
    assert b.state is HALF_OPEN
    b.record(20.2, False, PASS)  # nor an ordinary attempt
    assert b.state is HALF_OPEN


def test_opened_by_hand_it_stays_open_until_closed_by_hand() -> None:
    b, moves = breaker()
    assert b.force(0.0, True, "opened by ops")
    assert not b.force(1.0, True, "opened by ops")  # already
    assert b.state is OPEN
    assert b.reason == "opened by ops"
    assert b.opened == 1
    assert b.wait(1e9) == math.inf
    assert b.admit(1e9) == REFUSED  # no probes
    assert b.force(2.0, False, "closed by ops")
    assert b.state is CLOSED
    assert b.admit(2.0) == PASS
    assert not b.force(3.0, False, "closed by ops")
    assert moves == []  # the caller reports an operator's moves


def test_closing_by_hand_forgets_the_failures_and_the_longer_cooldown() -> None:
    b, _ = breaker()
    for t in (0.0, 0.1, 0.2, 0.3):
        attempt(b, t, failed=True)
    ticket = b.admit(5.3)
    b.record(5.3, True, ticket)  # cooldown now 7.5
    b.force(6.0, False, "closed by ops")
    for t in (6.0, 6.1, 6.2):
        attempt(b, t, failed=True)
    assert b.state is CLOSED  # the window started afresh
    attempt(b, 6.3, failed=True)
    assert b.wait(6.3) == pytest.approx(5.0)


def test_one_probe_by_default() -> None:
    b, _ = breaker(CircuitConfig(enabled=True, min_attempts=1, cooldown=1.0))
    attempt(b, 0.0, failed=True)
    ticket = b.admit(1.0)
    assert ticket > PASS
    assert b.admit(1.0) == REFUSED
    b.record(1.1, False, ticket)
    assert b.state is CLOSED


# --- the hold -----------------------------------------------------------------------------


def test_a_hold_is_capped_and_only_grows() -> None:
    hold = Hold()
    assert hold.remaining(0.0) == 0.0
    assert hold.extend(100.0, 5.0, cap=300.0) == 5.0
    assert hold.remaining(101.0) == 4.0
    assert hold.extend(101.0, 1.0, cap=300.0) == 1.0  # the message's own wait...
    assert hold.until == 105.0  # ...but a shorter Retry-After does not end the hold early
    assert hold.extend(101.0, 3600.0, cap=300.0) == 300.0
    assert hold.until == 401.0
    assert hold.remaining(500.0) == 0.0


def test_a_zero_cap_never_holds() -> None:
    hold = Hold()
    assert hold.extend(0.0, 30.0, cap=0.0) == 0.0
    assert hold.remaining(0.0) == 0.0


# --- the adaptive limit -------------------------------------------------------------------


def succeed(a: AdaptiveLimit, now: float, latency: float = 0.1) -> int:
    """One success while the pool runs at its limit."""
    return a.record(now, now - latency, latency, False, a.limit)


def test_slow_start_doubles_every_round_trip_up_to_the_ceiling() -> None:
    a = AdaptiveLimit(1, 100, now=0.0)
    assert a.limit == 1
    now = 0.0
    seen = []
    for _ in range(7):  # a round: as many successes as the limit allows in flight
        now += 0.1
        for _ in range(a.limit):
            succeed(a, now)
        seen.append(a.limit)
    assert seen == [2, 4, 8, 16, 32, 64, 100]


def test_it_only_grows_while_the_limit_holds_the_pool_back() -> None:
    a = AdaptiveLimit(4, 100, now=0.0)
    for i in range(100):
        a.record(i * 0.1, i * 0.1 - 0.1, 0.1, False, in_flight=2)
    assert a.limit == 4


def test_overload_cuts_to_three_quarters_once_per_round_then_growth_is_additive() -> None:
    a = AdaptiveLimit(1, 100, now=0.0)
    for _ in range(31):
        succeed(a, 1.0)
    assert a.limit == 32
    # A burst of 503s for attempts started before the cut: one cut only.
    assert a.record(2.0, 1.9, 0.001, True, 32) == 24
    for _ in range(10):
        a.record(2.0, 1.95, 0.001, True, 32)
    assert a.limit == 24
    # An attempt started after the cut, overloaded again: cut again.
    assert a.record(2.2, 2.1, 0.001, True, 24) == 18
    # No more slow start: about one more per round trip (as many successes as the limit).
    for _ in range(19):
        succeed(a, 3.0)
    assert a.limit == 19


def test_timeouts_and_slow_answers_are_overload_but_jitter_is_not() -> None:
    a = AdaptiveLimit(1, 100, now=0.0)
    for _ in range(15):
        succeed(a, 1.0, latency=0.02)
    assert a.limit == 16
    succeed(a, 1.1, latency=0.06)  # 3x the minimum but only 40 ms above: jitter
    assert a.limit == 17
    assert a.record(1.5, 1.0, 0.5, False, a.limit) == int(17 * DECREASE)


def test_the_minimum_latency_is_a_recent_one() -> None:
    a = AdaptiveLimit(1, 100, now=0.0)
    succeed(a, 1.0, latency=0.01)
    for t in range(2, 62):  # a minute of 200 ms answers: the 10 ms one is forgotten
        succeed(a, float(t), latency=0.2)
    before = a.limit
    assert succeed(a, 62.0, latency=0.2) >= before


def test_never_below_the_floor_nor_above_the_ceiling() -> None:
    a = AdaptiveLimit(3, 10, now=0.0)
    for t in range(20):
        a.record(float(t), float(t), 1.0, True, 10)
    assert a.limit == 3
    for _ in range(500):
        succeed(a, 30.0)
    assert a.limit == 10
    assert a.configure(6) == 6  # an operator lowers concurrency: the ceiling
    assert a.configure(2) == 2  # below min_concurrency: the ceiling wins
    assert a.floor == 2
    assert a.configure(50) == 3  # raised again: back to min_concurrency, and it climbs
