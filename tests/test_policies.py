"""Retry and rate-limit policies are pure: the clock and randomness are passed in."""

from __future__ import annotations

import pytest

from dispatcher.config import RetryConfig
from dispatcher.message import DeadReason
from dispatcher.ratelimit import TokenBucket
from dispatcher.retry import backoff, backoff_cap, decide

POLICY = RetryConfig(max_attempts=5, initial_backoff=1.0, max_backoff=10.0, multiplier=2.0)


def test_backoff_cap_grows_exponentially_then_caps() -> None:
    assert [backoff_cap(POLICY, n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_full_jitter_spans_zero_to_cap() -> None:
    assert backoff(POLICY, 3, lambda: 0.0) == 0.0
    assert backoff(POLICY, 3, lambda: 0.5) == 2.0
    assert backoff(POLICY, 3, lambda: 0.999) == pytest.approx(3.996)


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert backoff_cap(POLICY, 10_000) == 10.0


def test_decide_retries_until_max_attempts() -> None:
    assert decide(POLICY, 1, True, 100.0, lambda: 0.5) == (100.5, None)
    assert decide(POLICY, 4, True, 100.0, lambda: 0.5) == (104.0, None)
    assert decide(POLICY, 5, True, 100.0, lambda: 0.5) == (None, DeadReason.MAX_ATTEMPTS)


def test_permanent_failures_dead_letter_at_once() -> None:
    assert decide(POLICY, 1, False, 100.0, lambda: 0.5) == (None, DeadReason.PERMANENT)


def test_retry_after_is_honoured_when_longer_but_capped() -> None:
    assert decide(POLICY, 1, True, 0.0, lambda: 0.5, retry_after=7.0) == (7.0, None)
    assert decide(POLICY, 1, True, 0.0, lambda: 0.5, retry_after=0.1) == (0.5, None)
    assert decide(POLICY, 1, True, 0.0, lambda: 0.5, retry_after=9999.0) == (10.0, None)


def test_bucket_grants_burst_then_paces_at_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.0) == pytest.approx(0.2)  # reserved behind the previous waiter
    assert bucket.take(1.0) == 0.0  # refilled (and capped at burst)


def test_bucket_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=2, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.take(1000.0) == 0.0
    assert bucket.take(1000.0) == 0.0
    assert bucket.take(1000.0) > 0.0


def test_unlimited_bucket_never_waits() -> None:
    bucket = TokenBucket(rate=None, burst=1, now=0.0)
    assert all(bucket.take(0.0) == 0.0 for _ in range(1000))


def test_reconfigure_keeps_level_capped() -> None:
    bucket = TokenBucket(rate=10.0, burst=10, now=0.0)
    bucket.configure(rate=1.0, burst=2, now=0.0)
    assert bucket.level == 2.0
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.take(0.0) == pytest.approx(1.0)
