"""How every system's no-op job is counted, the same way in every worker process.

The job adds one to a counter in its own process; a daemon thread writes the count and the
time of the latest job to a hash on the bench's private Redis every 20 ms (HSET, one field
per process). So a job costs the same few nanoseconds everywhere and the bench reads when
the last one finished without a round trip per job. The Redis URL comes from the
environment (PEERS_REDIS_URL), as the worker programs of the peers import this module.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

KEY = "peers:tally"
_INTERVAL = 0.02

_count = 0
_last = 0.0
_started = False
_lock = threading.Lock()


def done() -> None:
    """One job finished: count it (and start the reporter on the first)."""
    global _count, _last, _started
    _count += 1
    _last = time.time()
    if not _started:
        with _lock:
            if not _started:
                _started = True
                threading.Thread(target=_report, name="peers-tally", daemon=True).start()


def _report() -> None:
    import redis

    client = redis.Redis.from_url(os.environ["PEERS_REDIS_URL"])
    field = f"{os.getpid()}"
    sent = -1
    while True:
        count, last = _count, _last
        if count != sent:
            client.hset(KEY, field, f"{count} {last!r}")
            sent = count
        time.sleep(_INTERVAL)


def read(client: Any) -> tuple[int, float]:
    """(jobs done, time of the latest) over every worker process."""
    total, latest = 0, 0.0
    for value in client.hgetall(KEY).values():
        count, last = value.split()
        total += int(count)
        latest = max(latest, float(last))
    return total, latest


# --- the job, as each system wants it ---------------------------------------------------


def noop(payload: Any = None) -> None:
    done()


async def noop_async(*args: Any, **kwargs: Any) -> None:
    done()
