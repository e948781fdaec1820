"""The built-in demo: what `dispatcher serve` runs with no config file.

Three pools on demo sinks, one of which fails often enough that retries, the DLQ and its
circuit breaker have something to show, and a trickle of generated traffic so the console
and /metrics move from the first second. Turn the traffic off with `--no-demo-traffic` or
DISPATCHER_DEMO__TRAFFIC=0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

from .dispatcher import Dispatcher
from .errors import Rejected
from .message import Publish

log = logging.getLogger("dispatcher.demo")

DEMO_CONFIG: dict[str, Any] = {
    "store": {"url": "sqlite:///./dispatcher-data/dispatcher.db"},
    "pools": {
        "email": {
            "concurrency": 8,
            "rate": 20,
            "burst": 10,
            "sink": {"type": "demo", "latency": 0.05, "fail_rate": 0.02},
        },
        "analytics": {
            "concurrency": 16,
            "sink": {"type": "demo", "latency": 0.005},
        },
        "payments": {
            "concurrency": 4,
            "timeout": 2,
            "retry": {"max_attempts": 3, "initial_backoff": 0.5, "max_backoff": 5},
            # Its failures open the circuit now and then: the console shows it probing.
            "circuit": {"enabled": True, "min_attempts": 10, "failure_ratio": 0.4},
            "sink": {"type": "demo", "latency": 0.1, "fail_rate": 0.35},
        },
    },
    "routes": [
        {"match": "user.signup", "pools": ["email", "analytics"]},
        {"match": "orders.*", "pools": ["payments", "email"]},
        {"match": "clicks.>", "pools": ["analytics"]},
    ],
    "demo": {"traffic": 5},
}

_TAGS = ("user.signup", "orders.created", "orders.paid", "clicks.web.home", "clicks.app.cart")


async def generate_traffic(dispatcher: Dispatcher, per_second: float) -> None:
    """Publish demo messages at about `per_second`, forever (the caller cancels it)."""
    rng = random.Random()
    n = 0
    while True:
        await asyncio.sleep(rng.expovariate(per_second))
        n += 1
        tag = rng.choice(_TAGS)
        payload = json.dumps({"demo": True, "n": n, "user": rng.randint(1, 500)}).encode()
        try:
            await dispatcher.publish([Publish(tag=tag, payload=payload)])
        except Rejected as exc:  # a paused or full pool: the demo just waits
            log.debug("demo message refused: %s", exc)
            await asyncio.sleep(1.0)
