"""The Sink interface: where a pool delivers a job.

A sink makes one attempt and classifies it; it never retries by itself (the pool owns retries
and timeouts). Returning means success. Raising `errors.Retry` or `errors.Permanent` says how
it failed (with an optional `retry_after`); `errors.Overloaded`, a Retry, says the receiver
itself is overloaded, which the pool acts on as a whole (it holds for the Retry-After, an
adaptive pool sends less). Any other exception is a retryable failure whose text becomes
the attempt's error. Timeouts are enforced by the pool by cancelling `deliver`.
"""

from __future__ import annotations

import abc
import contextvars

from ..message import Job

#: The live attempt span's traceparent, set by the tracing middleware (observe/tracing.py);
#: when unset, a sink sends the message's creation context (``Message.trace``) instead. It
#: lives with the interface so that observers need not import a concrete sink.
current_traceparent: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dispatcher_traceparent", default=None
)


class Attempting:
    """The job a task is attempting (None between attempts), for the log records made
    meanwhile (observe/logs.py). A pool's worker is one for its whole life: it is made
    current once, when the worker's task starts, and its `job` changes per attempt, so an
    attempt costs no context-variable set and reset."""

    __slots__ = ("job",)

    def __init__(self, job: Job | None = None) -> None:
        self.job = job


#: What the current task (or a handler's thread) is attempting; read only by log records.
current_attempt: contextvars.ContextVar[Attempting | None] = contextvars.ContextVar(
    "dispatcher_attempt", default=None
)


class Sink(abc.ABC):
    #: the `type` of its config, for logs
    kind: str = "abstract"

    async def start(self) -> None:
        """Acquire resources; called once before the first delivery."""
        return

    async def close(self) -> None:
        """Release resources; called once at shutdown after the last delivery."""
        return

    @abc.abstractmethod
    async def deliver(self, job: Job, attempt: int) -> None:
        """Attempt number `attempt` (1-based) of delivering `job`."""
