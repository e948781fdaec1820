"""The python sink: calls ``handler: "package.module:function"`` with each message.

An async handler is awaited on the loop. A sync handler runs in this sink's own bounded thread
pool, never on the loop; a dedicated pool means a handler that hangs (its attempt timed out,
but a thread cannot be cancelled) starves only its own pool, not DNS lookups or other pools.
The handler may raise `errors.Retry` or `errors.Permanent`; anything else it raises is a
retryable failure.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import inspect
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from ..config import PythonSinkConfig
from ..errors import ConfigError
from ..message import Job, Message
from .base import Attempting, Sink, current_attempt

Handler = Callable[[Message], Any]

#: threads per python sink; more concurrent sync attempts wait for a free thread
MAX_THREADS = 32


def resolve_handler(path: str, where: str) -> Handler:
    """Import "package.module:function"; ConfigError at `where` if that fails."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(where, f"expected 'package.module:function', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a config problem
        raise ConfigError(
            where, f"cannot import {module_name!r} for handler {path!r}: {exc!r}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                where, f"{module_name!r} has no {attr!r} (handler {path!r})"
            ) from None
    if not callable(target):
        raise ConfigError(where, f"handler {path!r} is not callable")
    return cast(Handler, target)


def _is_async(handler: Handler) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - an instance with async __call__
    return inspect.iscoroutinefunction(call)


class PythonSink(Sink):
    kind = "python"

    def __init__(self, pool: str, config: PythonSinkConfig) -> None:
        self.pool = pool
        self._path = config.handler
        self._handler: Handler | None = None
        self._async = False
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"PythonSink(pool={self.pool!r}, handler={self._path!r})"

    async def start(self) -> None:
        # Importing user code may touch disk: do it off the loop.
        handler = await asyncio.to_thread(
            resolve_handler, self._path, f"pools.{self.pool}.sink.handler"
        )
        self._async = _is_async(handler)
        if not self._async:
            self._executor = ThreadPoolExecutor(
                max_workers=MAX_THREADS, thread_name_prefix=f"dispatcher-python-{self.pool}"
            )
        self._handler = handler

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            # Joining threads blocks: wait for running handlers in another thread.
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    async def deliver(self, job: Job, attempt: int) -> None:
        handler = self._handler
        if handler is None:
            raise RuntimeError(f"{self!r} delivered before start()")
        if self._async:
            await handler(job.message)
            return
        assert self._executor is not None
        # Copy the context so the handler sees the attempt's trace and log context, with the
        # job pinned: a thread outlives an attempt that timed out, and its records must not
        # name the job its worker attempts next.
        context = contextvars.copy_context()
        context.run(current_attempt.set, Attempting(job))
        call = functools.partial(context.run, handler, job.message)
        result = await asyncio.get_running_loop().run_in_executor(self._executor, call)
        if inspect.isawaitable(result):  # a sync callable that returned a coroutine
            await cast(Awaitable[object], result)
