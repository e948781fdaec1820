"""Middleware: observers wrapped around every delivery attempt (metrics, tracing, logs).

Each middleware sees `before_attempt` (in order) and `after_attempt` (in reverse order, with
whatever its `before_attempt` returned, e.g. a span). They observe; they never decide. An
exception in a middleware is logged and swallowed, so a failing observer never breaks a
delivery (as dramatiq's middleware and faststream's telemetry middleware promise).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .message import Completion, Job

log = logging.getLogger("dispatcher.middleware")


class Middleware:
    """Override the hooks you need; the defaults do nothing."""

    def before_attempt(self, job: Job, attempt: int) -> object:
        return None

    def after_attempt(self, completion: Completion, state: object) -> None:
        return None


class Chain:
    """Calls a fixed sequence of middleware safely. Built once per pool, not per message."""

    __slots__ = ("_middleware", "_reversed")

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self._middleware = tuple(middleware)
        self._reversed = tuple(reversed(self._middleware))

    def __bool__(self) -> bool:
        return bool(self._middleware)

    def before(self, job: Job, attempt: int) -> list[object]:
        states: list[object] = []
        for mw in self._middleware:
            try:
                states.append(mw.before_attempt(job, attempt))
            except Exception:
                log.exception("middleware %s failed before an attempt", type(mw).__name__)
                states.append(None)
        return states

    def after(self, completion: Completion, states: list[object]) -> None:
        for mw, state in zip(self._reversed, reversed(states), strict=True):
            try:
                mw.after_attempt(completion, state)
            except Exception:
                log.exception("middleware %s failed after an attempt", type(mw).__name__)
