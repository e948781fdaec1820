"""Logs: one JSON object per line for machines, or short lines for a person at a terminal.

Each record carries what is known where it was logged: the message id, pool and attempt
(from `extra=` or from the attempt being delivered: a pool's worker is made current once per
task, see `sinks.base.current_attempt`, and holds the job it attempts), the trace and span
ids (of the current span, else of the message's creation context) and the asyncio task's
name (`pool:email:worker:3`). The pool logs an attempt that needs a human (`log_failure`).

Two renderings of one record, `dispatcher serve --log-format json|text`; by default JSON when
stdout is not a terminal (a collector reads it) and text when it is (`default_format`):

    {"time":"2026-11-22T10:00:00.123Z","level":"info","logger":"dispatcher.delivery",...}
    10:00:00.123 INFO    dispatcher.delivery: attempt timeout, retry in 1.2s: ... pool=email

Records are formatted on the thread that logs them (context variables live there) by the
standard library's QueueHandler and written by its QueueListener's thread, so a slow or
full stdout never blocks the event loop. Payloads, tokens and webhook secrets are never put
in a record; the fields are a fixed list.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
from logging.handlers import QueueHandler, QueueListener
from typing import IO, Any, Literal

import msgspec
from opentelemetry import trace

from ..message import Completion
from ..sinks.base import current_attempt
from ..timefmt import rfc3339

FIELDS = ("message_id", "pool", "attempt", "trace_id", "span_id", "task")
# A person reads the line next to its neighbours: the task repeats the pool, and a span id
# is only useful in a trace UI, which the trace id already leads to.
TEXT_SKIPS = frozenset({"task", "span_id"})
_encoder = msgspec.json.Encoder()
log = logging.getLogger("dispatcher.delivery")

LogFormat = Literal["json", "text"]


def context_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The contextual fields of a record, explicit `extra=` values first."""
    fields: dict[str, Any] = {}
    attempting = current_attempt.get()
    job = attempting.job if attempting is not None else None
    if job is not None:  # its attempt number is job.attempts + 1
        fields.update(message_id=job.message.id, pool=job.pool, attempt=job.attempts + 1)
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields.update(trace_id=f"{span.trace_id:032x}", span_id=f"{span.span_id:016x}")
    elif job is not None and job.message.trace:
        tp = job.message.trace
        fields.update(trace_id=tp[3:35], span_id=tp[36:52])
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        task = None
    if task is not None:
        fields["task"] = task.get_name()
    for name in FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            fields[name] = value
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(context_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


class TextFormatter(logging.Formatter):
    """`HH:MM:SS.mmm LEVEL logger: message key=value ...`; the time of day is the JSON line's
    (UTC, as the console shows times), a traceback follows on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        clock = rfc3339(record.created)[11:23]
        line = f"{clock} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = context_fields(record)
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if k not in TEXT_SKIPS)
        if extra:
            line = f"{line} {extra}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


FORMATTERS: dict[LogFormat, type[logging.Formatter]] = {
    "text": TextFormatter,
    "json": JsonFormatter,
}


def default_format(stream: IO[str]) -> LogFormat:
    """Text for a person at a terminal, JSON lines for a pipe or a file."""
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


class _Lines(logging.StreamHandler[IO[str]]):
    """Writes the lines QueueHandler formatted, on the listener's thread: a full pipe stalls
    that thread, never the event loop."""

    def handleError(self, record: logging.LogRecord) -> None:
        # stdout closed or gone: drop the line and keep running (there is nowhere to say so)
        if not isinstance(sys.exc_info()[1], OSError | ValueError):
            super().handleError(record)


class _Listener(QueueListener):
    """The standard listener, with its thread named and a stop that gives up after a while."""

    def start(self) -> None:
        super().start()
        if self._thread is not None:
            self._thread.name = "dispatcher-log-writer"

    def stop_within(self, timeout: float) -> None:
        # QueueListener.stop would wait for ever on a reader that stopped reading our stdout.
        self.enqueue_sentinel()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


class Logging:
    """The process's log output, made by `configure`."""

    def __init__(self, handler: logging.Handler, listener: _Listener) -> None:
        self.handler = handler
        self._listener = listener

    def stop(self, timeout: float = 2.0) -> None:
        """Detach and flush, waiting at most `timeout` (a reader that stopped reading our
        stdout must not keep the process from exiting)."""
        logging.getLogger().removeHandler(self.handler)
        self._listener.stop_within(timeout)


def configure(
    level: str | int = "INFO", stream: IO[str] | None = None, log_format: LogFormat | None = None
) -> Logging:
    """Send the root logger's records to `stream` (stdout) in `log_format` (by default the
    stream's, see `default_format`). Replaces the root logger's handlers."""
    stream = stream if stream is not None else sys.stdout
    records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    handler = QueueHandler(records)
    handler.setFormatter(FORMATTERS[log_format or default_format(stream)]())
    listener = _Listener(records, _Lines(stream))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    listener.start()
    return Logging(handler, listener)


def log_failure(completion: Completion) -> None:
    """An attempt that needs a human: it failed (INFO, it will be retried) or its message was
    dead-lettered (WARNING). Logged by the pool while the attempt is current (its span, its
    task). Never the payload; the error text is the sink's classification."""
    job, attempt = completion.job, completion.attempt
    extra = {"message_id": job.message.id, "pool": job.pool, "attempt": attempt.n}
    outcome = attempt.outcome.value
    if completion.dead is not None:
        reason = completion.dead.value
        log.warning("dead-lettered (%s) after %s: %s", reason, outcome, attempt.error, extra=extra)
    elif completion.retry_at is not None:
        delay = max(0.0, completion.retry_at - attempt.started_at - attempt.duration)
        log.info("attempt %s, retry in %.1fs: %s", outcome, delay, attempt.error, extra=extra)
