"""A pool's settings, as frozen typed values: its sink, limits, retry policy and receiver
protection (circuit breaker, Retry-After hold, adaptive concurrency); and `Section`, the base
of every section of the config file. config.py reads and checks the file, and re-exports
these (`dispatcher.config.PoolConfig`).

The string under a field is its documentation: the README's reference table and the
comments of `dispatcher init`'s starter file are generated from it (starter.py).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import msgspec

Seconds = Annotated[float, msgspec.Meta(ge=0)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
Count = Annotated[int, msgspec.Meta(ge=1)]


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # A section of the config file: typed, frozen, unknown keys refused. No docstring: a
    # section's docstring is its text in the README and the starter file, and this is none.
    pass


class RetryConfig(Section, frozen=True):
    """When a failed attempt is tried again. After n failed attempts the wait is uniform in
    [0, min(max_backoff, initial_backoff * multiplier^(n-1))] (full jitter)."""

    max_attempts: Count = 5
    """Attempts in all; when the last one fails the message goes to the DLQ."""
    initial_backoff: Seconds = 1.0
    """Seconds; the longest wait after the first failed attempt."""
    max_backoff: Seconds = 300.0
    """Seconds; no wait is longer, not even one a Retry-After asks for."""
    multiplier: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    """How much the longest wait grows with each failed attempt."""


class CircuitConfig(Section, frozen=True):
    """The pool's circuit breaker, and how long a receiver's Retry-After may hold the pool.
    While the circuit is open the pool makes no attempts: its messages wait, spending no
    attempt. Its state is per process and starts closed at every start."""

    enabled: bool = False
    """Open the circuit when too many recent attempts failed (timeouts, connection errors,
    5xx, 408, 429; a permanent 4xx is the message's fault and does not count)."""
    window: PositiveSeconds = 10.0
    """Seconds of recent attempts the failure ratio is taken over."""
    min_attempts: Count = 20
    """Attempts the window must hold before the circuit may open."""
    failure_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    """Share of failed attempts in the window that opens the circuit."""
    cooldown: PositiveSeconds = 5.0
    """Seconds the circuit stays open before probes test the receiver (half-open)."""
    max_cooldown: PositiveSeconds = 120.0
    """Seconds; a failed probe opens the circuit again for 1.5 times as long, up to this."""
    probes: Count = 1
    """Attempts let through while half-open; when all succeed the circuit closes, when one
    fails it opens again."""
    max_hold: Seconds = 300.0
    """Seconds at most that a 429 or 503 with Retry-After holds the whole pool (whether or
    not the circuit is enabled); 0: never hold."""


class AdaptiveConfig(Section, frozen=True):
    """Adaptive concurrency: the pool finds how many attempts in flight its receiver takes.
    The effective limit starts at min_concurrency and doubles every round trip while the
    receiver keeps up; after the first sign of overload (a 429, a 503, a timeout, or a
    latency well above its recent minimum) it shrinks by a quarter at each such sign and
    grows by one per round trip otherwise. concurrency is the ceiling."""

    enabled: bool = False
    """Move the effective concurrency between min_concurrency and concurrency."""
    min_concurrency: Count = 1
    """The lowest effective concurrency (at most concurrency)."""


class WebhookSinkConfig(Section, frozen=True, tag="webhook", tag_field="type"):
    """POST each message to a URL, signed per Standard Webhooks."""

    url: str
    """The http:// or https:// URL to POST to. Redirects are not followed; private and
    loopback addresses are refused unless the security keys allow them."""
    secret: str | None = None
    """Signing secret: whsec_ and base64 (any other text is used as its UTF-8 bytes). Unset:
    no webhook-signature header."""
    headers: dict[str, str] = {}
    """Extra request headers; they cannot replace the webhook-* and dispatcher-* ones."""


class PythonSinkConfig(Section, frozen=True, tag="python", tag_field="type"):
    """Call a Python function in the dispatcher's process."""

    handler: str
    """package.module:function, called with each Message, sync (in a thread) or async; it
    may raise dispatcher.Retry or dispatcher.Permanent to steer the outcome."""


class WebsocketSinkConfig(Section, frozen=True, tag="websocket", tag_field="type"):
    """Push each message to a client connected to GET /v1/subscribe."""

    ack_timeout: PositiveSeconds = 10.0
    """Seconds a subscriber has to ack a message; then the attempt fails (and is retried)."""


class LogSinkConfig(Section, frozen=True, tag="log", tag_field="type"):
    """Log one line per delivery (ids and sizes, never the payload)."""

    level: Literal["debug", "info", "warning"] = "info"
    """Level of the line: debug, info or warning."""


class DemoSinkConfig(Section, frozen=True, tag="demo", tag_field="type"):
    """Pretend to deliver, with a latency and a failure rate."""

    fail_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    """Share of attempts that fail, a tenth of them permanently."""
    latency: Seconds = 0.0
    """Mean seconds per attempt (each takes 0.5 to 1.5 times this)."""


SinkConfig = (
    WebhookSinkConfig | PythonSinkConfig | WebsocketSinkConfig | LogSinkConfig | DemoSinkConfig
)


class PoolConfig(Section, frozen=True):
    """Workers that deliver to one sink, with their own limits and retry policy."""

    sink: SinkConfig
    """Where the pool delivers; type is webhook, python, websocket, log or demo."""
    concurrency: Count = 8
    """Most deliveries in flight at once."""
    rate: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Deliveries per second, as a token bucket; null: unlimited."""
    burst: Count | None = None
    """Size of the token bucket (needs rate); null: one second's worth of rate."""
    max_backlog: Count = 100_000
    """Ingest answers 429 once this many of the pool's messages wait undelivered."""
    timeout: PositiveSeconds = 10.0
    """Seconds per attempt; a slower one fails as a timeout (and is retried)."""
    retry: RetryConfig = RetryConfig()
    circuit: CircuitConfig = CircuitConfig()
    adaptive: AdaptiveConfig = AdaptiveConfig()

    @property
    def effective_burst(self) -> int:
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate)) if self.rate else 1
