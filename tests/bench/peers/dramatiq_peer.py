"""Dramatiq on Redis. Worker: two processes with the default eight threads each (the
defaults its docs describe); retries off for the no-op, as nothing fails."""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from . import tally

broker = RedisBroker(url=os.environ["PEERS_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", max_retries=0)
def noop(payload: Any) -> None:
    tally.done()


def produce(n: int, payload: Any) -> None:
    for _ in range(n):
        noop.send(payload)
