"""The values tests build, each in one place with keyword overrides: messages, jobs and
completions as the stores and sinks take them, and settings as `settings_from_dict` reads them.

Defaults are fixed (a message is created at `T0`), so a test states only what it is about.
"""

from __future__ import annotations

from typing import Any

from dispatcher.config import Settings, settings_from_dict
from dispatcher.errors import Permanent
from dispatcher.message import (
    Attempt,
    Completion,
    DeadReason,
    Job,
    Message,
    NewMessage,
    Outcome,
)

T0 = 1_700_000_000.0

# --- messages, jobs, completions --------------------------------------------------------


def message(
    id: str = "m-1",
    *,
    tag: str = "user.signup",
    payload: bytes = b"{}",
    created: float = T0,
    priority: int = 0,
    delay: float = 0.0,
    headers: dict[str, str] | None = None,
    trace: str | None = None,
) -> Message:
    return Message(
        id=id,
        tag=tag,
        payload=payload,
        created_at=created,
        priority=priority,
        available_at=created + delay,
        headers=headers or {},
        trace=trace,
    )


def new_message(m: Message | str, *pools: str, **fields: Any) -> NewMessage:
    """`m` for `pools` (default "p"); a string is the id of a `message(**fields)`."""
    return NewMessage(message(m, **fields) if isinstance(m, str) else m, pools or ("p",))


def job(id: str = "m-1", *, pool: str = "p", attempts: int = 0, **fields: Any) -> Job:
    """A claimed job of a `message(id, **fields)`, as a sink is handed it."""
    m = message(id, **fields)
    return Job(key=1, pool=pool, message=m, attempts=attempts, enqueued_at=m.available_at)


def attempt(
    n: int,
    at: float,
    outcome: Outcome = Outcome.FAILURE,
    error: str | None = "boom",
    duration: float = 0.5,
) -> Attempt:
    return Attempt(n=n, started_at=at, duration=duration, outcome=outcome, error=error)


def delivered(job: Job, at: float) -> Completion:
    return Completion(job, attempt(job.attempts + 1, at, Outcome.SUCCESS, None))


def retry(job: Job, at: float, retry_at: float, error: str = "boom") -> Completion:
    return Completion(job, attempt(job.attempts + 1, at, error=error), retry_at=retry_at)


def dead(
    job: Job, at: float, error: str = "boom", reason: DeadReason = DeadReason.PERMANENT
) -> Completion:
    return Completion(job, attempt(job.attempts + 1, at, error=error), dead=reason)


# --- settings -----------------------------------------------------------------------------


def config(**sections: Any) -> dict[str, Any]:
    """A raw config of the sections given; the store is memory unless `store` says otherwise
    (a string is its URL)."""
    store = sections.pop("store", "memory://")
    return {"store": {"url": store} if isinstance(store, str) else store, **sections}


def settings(**sections: Any) -> Settings:
    """`config(**sections)`, validated, with no environment."""
    return settings_from_dict(config(**sections), env={})


def webhook_config(
    url: str, pools: dict[str, dict[str, Any]], routes: list[dict[str, Any]], **sections: Any
) -> dict[str, Any]:
    """Webhook pools pointing at `url/<pool>` on loopback (allowed by CIDR)."""
    return config(
        **{
            "security": {"webhook_allow_cidrs": ["127.0.0.1/32"]},
            "pools": {
                name: {"sink": {"type": "webhook", "url": f"{url}/{name}"}, **cfg}
                for name, cfg in pools.items()
            },
            "routes": routes,
            **sections,
        }
    )


def webhook_settings(
    url: str, pools: dict[str, dict[str, Any]], routes: list[dict[str, Any]], **sections: Any
) -> Settings:
    return settings_from_dict(webhook_config(url, pools, routes, **sections), env={})


def fail(message: Message) -> None:
    """A python sink handler: every message goes to the DLQ at once."""
    raise Permanent(f"refused {message.tag}")


def doomed_pool(**cfg: Any) -> dict[str, Any]:
    """A pool's config that dead-letters every message at its first attempt."""
    return {
        "sink": {"type": "python", "handler": "tests.factories:fail"},
        "retry": {"max_attempts": 1},
        **cfg,
    }
