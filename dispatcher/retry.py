"""Retry policy: pure decisions, with the random source passed in so tests never sleep.

Backoff for attempt n (1-based, the attempt that just failed) is full jitter:
a uniform time in [0, min(max_backoff, initial_backoff * multiplier ** (n - 1))].
"""

from __future__ import annotations

from collections.abc import Callable

from .config import RetryConfig
from .message import DeadReason


def backoff_cap(policy: RetryConfig, attempt: int) -> float:
    """The upper bound of the backoff after `attempt` failed attempts."""
    # Cap the exponent first: multiplier ** 1000 would overflow a float.
    exponent = min(attempt - 1, 1024)
    try:
        grown = policy.initial_backoff * policy.multiplier**exponent
    except OverflowError:
        grown = policy.max_backoff
    return min(policy.max_backoff, grown)


def backoff(policy: RetryConfig, attempt: int, random: Callable[[], float]) -> float:
    """Full-jitter delay before the next attempt; `random` returns a float in [0, 1)."""
    return backoff_cap(policy, attempt) * random()


def decide(
    policy: RetryConfig,
    attempt: int,
    retryable: bool,
    now: float,
    random: Callable[[], float],
    retry_after: float | None = None,
) -> tuple[float | None, DeadReason | None]:
    """After failed attempt number `attempt`: (retry_at, None) or (None, reason to dead-letter).

    A `Retry-After` from the downstream is honoured when it asks for longer than the jittered
    backoff (never shorter: the backoff protects a recovering downstream from a herd), but
    still capped at max_backoff so one bad header cannot park a message for a year.
    """
    if not retryable:
        return None, DeadReason.PERMANENT
    if attempt >= policy.max_attempts:
        return None, DeadReason.MAX_ATTEMPTS
    delay = backoff(policy, attempt, random)
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, max(policy.max_backoff, delay))
    return now + delay, None
