"""Middleware: observers wrapped around every delivery attempt: a user's, and the span of
each attempt (with its metric exemplars) while traces record. The built-in metrics and log
context cost no call per attempt (see observe/__init__.py).

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


def _overrides(mw: Middleware, hook: str) -> bool:
    return getattr(type(mw), hook) is not getattr(Middleware, hook)


class Chain:
    """Calls a fixed sequence of middleware safely. Built once per pool, not per message:
    which middleware override which hook is worked out here, so an attempt calls only real
    hooks and allocates at most one small list (the states of `before_attempt` hooks)."""

    __slots__ = ("_after", "_before")

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        ordered = tuple(middleware)
        self._before = tuple(mw for mw in ordered if _overrides(mw, "before_attempt"))
        slot = {id(mw): i for i, mw in enumerate(self._before)}
        # after_attempt runs in reverse order, each with the state its before_attempt made
        self._after = tuple(
            (mw, slot.get(id(mw), -1))
            for mw in reversed(ordered)
            if _overrides(mw, "after_attempt")
        )

    def __bool__(self) -> bool:
        return bool(self._before or self._after)

    def before(self, job: Job, attempt: int) -> list[object]:
        states: list[object] = []
        for mw in self._before:
            try:
                states.append(mw.before_attempt(job, attempt))
            except Exception:
                log.exception("middleware %s failed before an attempt", type(mw).__name__)
                states.append(None)
        return states

    def after(self, completion: Completion, states: list[object]) -> None:
        for mw, i in self._after:
            try:
                mw.after_attempt(completion, states[i] if i >= 0 else None)
            except Exception:
                log.exception("middleware %s failed after an attempt", type(mw).__name__)
