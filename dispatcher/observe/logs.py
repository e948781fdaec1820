"""Structured logs: one JSON object per line on stdout, human-readable lines on a TTY.

Each record carries what is known where it was logged: the message id, pool and attempt
(from `extra=` or from the attempt being delivered, which `LogContextMiddleware` keeps in a
context variable), the trace and span ids (of the current span, else of the message's
creation context) and the asyncio task's name (`pool:email:worker:3`).

Records are formatted on the thread that logs them (context variables live there) and
written by a writer thread, so a slow or full stdout never blocks the event loop.
Payloads, tokens and webhook secrets are never put in a record; the fields are a fixed list.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
import time
from contextvars import ContextVar, Token
from typing import IO, Any

import msgspec
from opentelemetry import trace

from ..message import Completion, Job
from ..middleware import Middleware

#: The job being attempted on this task (its attempt number is job.attempts + 1).
current_attempt: ContextVar[Job | None] = ContextVar("dispatcher_attempt", default=None)

FIELDS = ("message_id", "pool", "attempt", "trace_id", "span_id", "task")
_encoder = msgspec.json.Encoder()
log = logging.getLogger("dispatcher.delivery")


def context_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The contextual fields of a record, explicit `extra=` values first."""
    fields: dict[str, Any] = {}
    job = current_attempt.get()
    if job is not None:
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
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(context_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record.created)} {record.levelname:<7} {record.name}: "
            f"{record.getMessage()}"
        )
        extra = " ".join(f"{k}={v}" for k, v in context_fields(record).items() if k != "task")
        if extra:
            line = f"{line}  [{extra}]"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _timestamp(created: float) -> str:
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


class _Handoff(logging.Handler):
    """Formats on the logging thread (context variables live there), hands the line over."""

    def __init__(self, lines: queue.SimpleQueue[str | None]) -> None:
        super().__init__()
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.put_nowait(self.format(record))
        except Exception:
            self.handleError(record)


class _Writer(threading.Thread):
    """Writes lines to the stream; a full pipe stalls this thread, never the event loop."""

    def __init__(self, lines: queue.SimpleQueue[str | None], stream: IO[str]) -> None:
        super().__init__(name="dispatcher-log-writer", daemon=True)
        self._lines = lines
        self._stream = stream

    def run(self) -> None:
        while True:
            batch = [self._lines.get()]  # then whatever else is queued, and one flush
            while batch[-1] is not None and not self._lines.empty():
                batch.append(self._lines.get_nowait())
            try:
                for line in batch:
                    if line is not None:
                        self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # stdout closed or gone: drop, keep running
                pass
            if batch[-1] is None:
                return


class Logging:
    """The process's log output, made by `configure`."""

    def __init__(
        self, handler: logging.Handler, writer: _Writer, lines: queue.SimpleQueue[str | None]
    ) -> None:
        self.handler = handler
        self._writer = writer
        self._lines = lines

    def stop(self, timeout: float = 2.0) -> None:
        """Detach and flush, waiting at most `timeout` (a reader that stopped reading our
        stdout must not keep the process from exiting)."""
        logging.getLogger().removeHandler(self.handler)
        self._lines.put(None)
        self._writer.join(timeout)


def configure(level: str | int = "INFO", stream: IO[str] | None = None) -> Logging:
    """Send the root logger's records to `stream` (stdout): JSON lines, or human-readable
    lines when it is a TTY. Replaces the root logger's handlers."""
    stream = stream if stream is not None else sys.stdout
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    handler = _Handoff(lines)
    tty = getattr(stream, "isatty", None)
    handler.setFormatter(HumanFormatter() if tty is not None and tty() else JsonFormatter())
    writer = _Writer(lines, stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    writer.start()
    return Logging(handler, writer, lines)


class LogContextMiddleware(Middleware):
    """Makes the attempt known to every log record made while it runs, and logs what
    needs a human: an attempt that failed (INFO, it will be retried) or a dead letter
    (WARNING). Never the payload; the error text is the sink's classification."""

    def before_attempt(self, job: Job, attempt: int) -> object:
        return current_attempt.set(job)  # no tuple: this runs for every attempt

    def after_attempt(self, completion: Completion, state: object) -> None:
        try:
            if completion.dead is not None or completion.retry_at is not None:
                _log_failure(completion)
        finally:
            if isinstance(state, Token):
                current_attempt.reset(state)


def _log_failure(completion: Completion) -> None:
    job, attempt = completion.job, completion.attempt
    extra = {"message_id": job.message.id, "pool": job.pool, "attempt": attempt.n}
    outcome = attempt.outcome.value
    if completion.dead is not None:
        reason = completion.dead.value
        log.warning("dead-lettered (%s) after %s: %s", reason, outcome, attempt.error, extra=extra)
    elif completion.retry_at is not None:
        delay = max(0.0, completion.retry_at - attempt.started_at - attempt.duration)
        log.info("attempt %s, retry in %.1fs: %s", outcome, delay, attempt.error, extra=extra)
